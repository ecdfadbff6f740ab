"""SMS provider adapters behind one seam (:class:`channels.base.ProviderAdapter`)."""
