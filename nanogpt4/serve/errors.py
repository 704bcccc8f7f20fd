"""OpenAI's error body `{"error": {"message", "type", "param", "code"}}` and the exception that carries one with
its HTTP status (and headers, e.g. `retry-after`) to the app's handler."""


class APIError(Exception):
    def __init__(self, status, message, type_="invalid_request_error", param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def error_body(message, type_="invalid_request_error", param=None, code=None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
