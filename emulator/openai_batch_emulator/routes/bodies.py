"""Reading request bodies as the real API does: a JSON object, or a multipart form, or an OpenAI-shaped 400."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from openai_batch_emulator.errors import ApiFailure

_UNPARSABLE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library "
    "correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble "
    "figuring out how to fix this, please contact us through our help center at help.openai.com.)"
)


def _not_json(name: str) -> Any:
    # NaN and Infinity are Python's, not JSON's (RFC 8259): a strict parser refuses them.
    raise ValueError(f"{name} is not a JSON value")


async def json_body(request: Request) -> Any:
    """The decoded body (any JSON value; the contract decides whether it is the object it needs).

    A missing Content-Type is let through when the body parses, as lenient servers do; a declared type
    other than JSON is refused, since the body was then not meant as JSON.
    """
    content_type = _media_type(request)
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiFailure(400, f"Invalid Content-Type header ({content_type}), expected application/json.")
    try:
        return json.loads((await request.body()).decode("utf-8"), parse_constant=_not_json)
    except ValueError:  # UnicodeDecodeError included: JSON is UTF-8
        raise ApiFailure(400, _UNPARSABLE) from None


async def multipart_form(request: Request) -> FormData:
    """The parsed ``multipart/form-data`` body."""
    content_type = _media_type(request)
    if content_type != "multipart/form-data":
        raise ApiFailure(
            400,
            f"Invalid Content-Type header ({content_type or 'none'}), expected multipart/form-data. (HINT: If you're "
            "using curl, you can pass -H 'Content-Type: multipart/form-data')",
        )
    try:
        return await request.form()
    except HTTPException as error:  # the multipart parser's own 400
        raise ApiFailure(400, f"Could not parse the multipart form: {error.detail}") from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()
