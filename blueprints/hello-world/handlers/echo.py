"""Echo the request's JSON body back with some metadata about the request."""

from datetime import datetime, timezone


def handler(request):
    return {
        "status": 200,
        "headers": {"Content-Type": "application/json", "X-Handler-Type": "external-python"},
        "body": {
            "echo": request.json,
            "metadata": {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "timestamp": datetime.now(timezone.utc).isoformat(),
                "handler_source": "external-file",
            },
        },
    }
