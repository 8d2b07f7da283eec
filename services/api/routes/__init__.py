"""The API's routes, one module per resource, each an `APIRouter` that
`services.api.app.create_app` joins into the application."""
