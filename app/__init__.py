"""The faces of medinfer: the Typer CLI and the FastAPI service. Thin and generic over the task registry."""
