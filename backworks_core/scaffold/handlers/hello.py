"""A Backworks Python handler: one `request` argument; return a JSON value or {status, headers, body}."""


def handler(request):
    name = request.params["name"]
    return {"status": 200, "headers": {"X-Greeting": "yes"}, "body": {"message": f"Hello, {name}!"}}
