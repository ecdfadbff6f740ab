"""A local stand-in for the Functions host where Azure Functions Core Tools is not installed.

It serves a ``func.FunctionApp`` from the app's own function metadata (``app.get_functions()``):
HTTP triggers through an ASGI app, queue triggers by polling Azure Storage queues. Like
``func start``, it does not enforce function keys.
"""
