"""The framework's floor: a bare FastAPI endpoint that parses a JSON body and echoes it back."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()


@app.post("/echo")
async def echo(request: Request) -> Any:
    body = await request.json()
    import json

    return Response(json.dumps(body), media_type="application/json")
