"""The ingest API's routes, one module per resource; ``services.ingest.api.create_app`` mounts them."""
