"""The client's exception tree and its mapping from gRPC status codes."""

from __future__ import annotations

import re

import grpc
import pytest

import tms_client
from tms_client import exceptions
from tms_client.exceptions import CallError, TMSError, from_rpc_error, status_of


class FailedCall(grpc.RpcError):
    """What a failed call raises: an RpcError that is also a grpc.Call with code and details."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        super().__init__(f"<FailedCall {code}>")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


def documented_tree() -> list[tuple[int, str, str]]:
    """(depth, class name, rest of the line) for each line of the docstring's tree."""
    doc = exceptions.__doc__ or ""
    block = doc.split("The tree::", 1)[1].split("\n\n")[1]
    rows = []
    for line in block.splitlines():
        match = re.match(r"^ {4}((?:[│ ] {3})*)(?:[├└]── )?(\w+)\s*(.*)$", line)
        assert match, f"not a tree line: {line!r}"
        depth = len(match[1]) // 4 + (1 if "──" in line else 0)
        rows.append((depth, match[2], match[3]))
    return rows


def documented_codes() -> dict[str, grpc.StatusCode]:
    """Class name -> status code, as the docstring's tree says."""
    codes = {}
    for _, name, rest in documented_tree():
        code = rest.split(":", 1)[0]
        if code.isupper():
            codes[name] = grpc.StatusCode[code]
    return codes


# The README's error table ("status | when | client exception"), written out by hand: the
# truth the mapping and the docstring are checked against, not read from either.
README_TABLE = {
    "INVALID_ARGUMENT": "InvalidInputError",
    "NOT_FOUND": "ModelNotFoundError",
    "FAILED_PRECONDITION": "ModelNotReadyError",
    "UNIMPLEMENTED": "UnsupportedCallError",
    "INTERNAL": "ModelFailedError",
    "UNAVAILABLE": "UnavailableError",
    "DEADLINE_EXCEEDED": "DeadlineExceededError",
    "RESOURCE_EXHAUSTED": "ResourceExhaustedError",
    "UNAUTHENTICATED": "UnauthenticatedError",
    "PERMISSION_DENIED": "PermissionDeniedError",
}

EXCEPTION_CLASSES = {
    name
    for name in exceptions.__all__
    if isinstance(getattr(exceptions, name), type)
    and issubclass(getattr(exceptions, name), BaseException)
}


def test_the_docstring_tree_lists_every_exception_class() -> None:
    names = [name for _, name, _ in documented_tree()]
    assert len(names) == len(set(names))
    assert set(names) == EXCEPTION_CLASSES


def test_the_docstring_tree_matches_the_class_hierarchy() -> None:
    parents: list[str] = []
    for depth, name, _ in documented_tree():
        parents = parents[:depth]
        cls = getattr(exceptions, name)
        if parents:
            assert cls.__bases__ == (getattr(exceptions, parents[-1]),), name
        else:
            assert cls is TMSError
        parents.append(name)


def test_every_status_code_of_the_table_is_documented() -> None:
    codes = documented_codes()
    call_errors = {name for name in EXCEPTION_CLASSES if name not in ("TMSError", "ConnectError")}
    # ClientClosedError is the client's own: no status a server sends maps to it.
    assert set(codes) == call_errors - {"CallError", "ClientClosedError"}
    assert len(set(codes.values())) == len(codes)


def test_the_docstring_says_what_the_readme_table_says() -> None:
    documented = {code.name: name for name, code in documented_codes().items()}
    assert documented == README_TABLE


@pytest.mark.parametrize(("code_name", "name"), sorted(README_TABLE.items()))
def test_status_codes_map_to_the_class_of_the_readme_table(code_name: str, name: str) -> None:
    code = grpc.StatusCode[code_name]
    error = from_rpc_error(FailedCall(code, "something broke"))
    assert type(error) is getattr(exceptions, name)
    assert isinstance(error, CallError)
    assert isinstance(error, TMSError)
    assert error.code is code
    assert error.details == "something broke"
    assert str(error) == f"{code.name}: something broke"


UNMAPPED = [code for code in grpc.StatusCode if code.name not in README_TABLE]


@pytest.mark.parametrize("code", UNMAPPED, ids=lambda code: code.name)
def test_other_status_codes_are_plain_call_errors(code: grpc.StatusCode) -> None:
    error = from_rpc_error(FailedCall(code, "odd"))
    assert type(error) is CallError
    assert error.code is code
    assert str(error) == f"{code.name}: odd"


def test_unmapped_codes_include_the_rare_ones() -> None:
    assert {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    } <= set(UNMAPPED)


def test_an_rpc_error_without_a_status_is_unknown() -> None:
    error = grpc.RpcError("channel closed")
    assert status_of(error) == (grpc.StatusCode.UNKNOWN, "channel closed")
    mapped = from_rpc_error(error)
    assert type(mapped) is CallError
    assert mapped.code is grpc.StatusCode.UNKNOWN
    assert mapped.details == "channel closed"


@pytest.mark.parametrize("details", [None, ""])
def test_missing_details_fall_back_to_the_error_text(details: str | None) -> None:
    error = FailedCall(grpc.StatusCode.UNAVAILABLE, details)
    assert status_of(error) == (grpc.StatusCode.UNAVAILABLE, str(error))
    assert from_rpc_error(error).details == "<FailedCall StatusCode.UNAVAILABLE>"


def test_exceptions_are_exported_from_the_package() -> None:
    for name in EXCEPTION_CLASSES:
        assert getattr(tms_client, name) is getattr(exceptions, name)
    assert issubclass(tms_client.ImageError, ValueError)
