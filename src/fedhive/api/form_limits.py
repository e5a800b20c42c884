"""Caps on the files and fields of one route's form: ``route_class_override=form_limited(...)``.

Starlette lets a form be read with ``max_files`` and ``max_fields`` and keeps the form it read for
the rest of the request, but the FastAPI release fedhive pins (the one Flower supports, see
docs/flower.md) reads every form with Starlette's defaults (1000 each). A route made with this
class reads its form first, with its own caps, so FastAPI's own parsing then reuses that form.
Starlette answers 400 naming the cap that was passed, before anything of the form is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from python_multipart.exceptions import FormParserError

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def form_limited(*, max_files: int, max_fields: int) -> type[APIRoute]:
    """A route class whose form may hold at most ``max_files`` files and ``max_fields`` fields."""

    class FormLimitedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def limited(request: Request) -> Response:
                content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if content_type in _FORM_TYPES:
                    try:
                        await request.form(max_files=max_files, max_fields=max_fields)
                    except FormParserError as exc:  # a malformed body is the caller's mistake: 400, not 500
                        raise HTTPException(400, f"the form could not be read: {exc}") from None
                return await handler(request)

            return limited

    return FormLimitedRoute
