"""Offline evaluation of a ValidatingAdmissionPolicy's CEL with cel-python.

Evaluates, as the API server does: the match conditions (all must be true, else the policy
does not apply), the variables in order (exposed as ``variables.<name>``), then each
validation; a false validation yields its ``messageExpression`` (else ``message``). CEL
extensions the API server adds are supplied where the policies use them: only
``string.split(sep)`` (Kubernetes' ext.Strings, the same result as Python's ``str.split`` for
a non-empty separator). Regexes are RE2, as in Kubernetes (cel-python uses google-re2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes


def _split(text: Any, sep: Any) -> celtypes.ListType:
    return celtypes.ListType([celtypes.StringType(p) for p in str(text).split(str(sep))])


_FUNCTIONS = {"split": _split}


@dataclass(frozen=True)
class Verdict:
    """``applies`` false: a match condition excluded the request. Else the failed messages."""

    applies: bool
    denied: tuple[str, ...]

    @property
    def allowed(self) -> bool:
        return not self.denied


class Policy:
    """A compiled ValidatingAdmissionPolicy spec (every expression compiled up front, so a
    syntax error fails the test that loads it)."""

    def __init__(self, policy: dict[str, Any]) -> None:
        self.name = policy["metadata"]["name"]
        spec = policy["spec"]
        self._env = celpy.Environment()
        self._conditions = [self._compile(c["expression"]) for c in spec.get("matchConditions", [])]
        self._variables = [(v["name"], self._compile(v["expression"])) for v in spec["variables"]]
        self._validations = [
            (
                self._compile(v["expression"]),
                self._compile(v["messageExpression"]) if "messageExpression" in v else None,
                v.get("message", ""),
            )
            for v in spec["validations"]
        ]

    def _compile(self, expression: str) -> Any:
        return self._env.program(self._env.compile(expression), functions=_FUNCTIONS)

    def evaluate(
        self,
        *,
        operation: str,
        resource: str,
        obj: dict[str, Any] | None,
        old: dict[str, Any] | None = None,
        username: str = "admin",
        extra: dict[str, list[str]] | None = None,
    ) -> Verdict:
        """The policy's verdict on one request, like the API server's admission stage."""
        request = {
            "operation": operation,
            "resource": {"group": "resource.k8s.io", "version": "v1", "resource": resource},
            "userInfo": {"username": username, "extra": extra or {}},
        }
        activation: dict[str, Any] = {
            "request": celpy.json_to_cel(request),
            "object": celpy.json_to_cel(obj),
            "oldObject": celpy.json_to_cel(old),
        }
        for condition in self._conditions:
            if not self._true(condition.evaluate(activation)):
                return Verdict(applies=False, denied=())
        variables: dict[str, Any] = {}
        for name, program in self._variables:
            activation["variables"] = celtypes.MapType(variables)
            variables[celtypes.StringType(name)] = self._value(program.evaluate(activation), name)
        activation["variables"] = celtypes.MapType(variables)
        denied = []
        for expression, message_expression, message in self._validations:
            if not self._true(expression.evaluate(activation)):
                text = message
                if message_expression is not None:
                    text = str(self._value(message_expression.evaluate(activation), "message"))
                denied.append(text)
        return Verdict(applies=True, denied=tuple(denied))

    @staticmethod
    def _value(value: Any, what: str) -> Any:
        assert not isinstance(value, celpy.CELEvalError), f"CEL error in {what}: {value}"
        return value

    def _true(self, value: Any) -> bool:
        value = self._value(value, "expression")
        assert isinstance(value, celtypes.BoolType), f"not a bool: {value!r}"
        return bool(value)
