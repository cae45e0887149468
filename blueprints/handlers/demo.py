"""Python handlers for blueprints/demo.yaml."""


def echo(request):
    """Send back what arrived, the way a handler sees it."""
    return {
        "status": 200,
        "headers": {"X-Handler": "demo.echo"},
        "body": {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "json": request.json,
            "request_id": request.request_id,
        },
    }
