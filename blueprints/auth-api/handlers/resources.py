"""The auth-api example's resource handlers: list, get, create, update and delete.

The auth middlewares have already run when these are called: `request.user` is the caller
(username, roles), and writes only get here for admins. Resources have a `name` (required,
a non-empty string) and an optional `description`; other fields in the body are ignored.
"""

from __future__ import annotations

from typing import Any

from resource_store import STORE  # the shared list (see resource_store.py)

MAX_NAME = 200
MAX_DESCRIPTION = 2000


def _error(request: Any, status: int, message: str) -> dict[str, Any]:
    # The same shape as the gateway's own errors.
    return {"status": status, "body": {"error": message, "status": status, "request_id": request.request_id}}


def _fields(request: Any, partial: bool) -> dict[str, Any] | str:
    """The writable fields of the JSON body, or why the body is refused."""
    body = request.json
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    fields: dict[str, Any] = {}
    if "name" in body or not partial:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            return "name is required and must be a non-empty string"
        if len(name) > MAX_NAME:
            return f"name must be at most {MAX_NAME} characters"
        fields["name"] = name.strip()
    if "description" in body:
        description = body["description"]
        if description is not None and not isinstance(description, str):
            return "description must be a string"
        if description is not None and len(description) > MAX_DESCRIPTION:
            return f"description must be at most {MAX_DESCRIPTION} characters"
        fields["description"] = description
    elif not partial:
        fields["description"] = None
    if partial and not fields:
        return "nothing to update: send name and/or description"
    return fields


def list_resources(request):
    resources = STORE.all()
    return {"resources": resources, "count": len(resources)}


def get_resource(request):
    resource = STORE.get(int(request.params["id"]))
    if resource is None:
        return _error(request, 404, "Resource not found")
    return {"resource": resource}


def create_resource(request):
    fields = _fields(request, partial=False)
    if isinstance(fields, str):
        return _error(request, 400, fields)
    resource = STORE.create(fields, request.user.username)
    return {"status": 201, "body": {"message": "Resource created", "resource": resource}}


def update_resource(request):
    fields = _fields(request, partial=True)
    if isinstance(fields, str):
        return _error(request, 400, fields)
    resource = STORE.update(int(request.params["id"]), fields, request.user.username)
    if resource is None:
        return _error(request, 404, "Resource not found")
    return {"message": "Resource updated", "resource": resource}


def delete_resource(request):
    resource = STORE.delete(int(request.params["id"]))
    if resource is None:
        return _error(request, 404, "Resource not found")
    return {"message": "Resource deleted", "resource": resource}
