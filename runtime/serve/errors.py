"""The one error type of the server: an HTTP status and the OpenAI error fields it is reported with."""

from __future__ import annotations


class ServeError(Exception):
    """An error with the HTTP status and OpenAI error type it is reported with."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
