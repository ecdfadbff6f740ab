"""Azure Functions entry points, one module per trigger family; each exposes ``blueprint(services)``."""
