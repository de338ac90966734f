"""Payload codecs. JSON by default; never pickle."""

from __future__ import annotations

import json
from typing import Any, Protocol, TypeVar

import attrs
import cattrs
from cattrs.preconf.json import make_converter

from ._errors import InvalidPayload

__all__ = ["Codec", "JsonCodec"]

T = TypeVar("T")


class Codec(Protocol):
    """Turns task arguments and results into bytes and back.

    ``decode`` gives plain values; ``structure`` fits them to the handler's annotated
    type. Both raise :class:`InvalidPayload` with a reason when they cannot.

    Example::

        codec = JsonCodec()
        assert codec.decode(codec.encode({"a": 1})) == {"a": 1}
    """

    def encode(self, value: object) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...

    def structure(self, value: Any, tp: type[T]) -> T: ...


def _default_converter() -> cattrs.Converter:
    return make_converter()


# Made once: ``json.dumps`` with options builds an encoder per call, and ``json.loads`` of
# bytes sniffs their encoding first (turret always writes UTF-8).
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_decode_json = json.JSONDecoder().decode


@attrs.frozen
class JsonCodec:
    """JSON through a cattrs converter: attrs classes, dataclasses, datetimes, enums.

    Example::

        @attrs.frozen
        class Email:
            to: str

        codec = JsonCodec()
        data = codec.encode(Email("a@b.c"))          # b'{"to":"a@b.c"}'
        assert codec.structure(codec.decode(data), Email) == Email("a@b.c")
    """

    converter: cattrs.Converter = attrs.field(factory=_default_converter)

    def encode(self, value: object) -> bytes:
        try:
            plain = self.converter.unstructure(value)
            return _encode_json(plain).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"cannot encode {type(value).__name__} as JSON: {exc}; pass JSON values, "
                "attrs classes or dataclasses, or give the backend another codec"
            ) from exc

    def decode(self, data: bytes) -> Any:
        try:
            return _decode_json(data.decode())
        except ValueError as exc:  # UnicodeDecodeError is one too
            raise InvalidPayload(f"payload is not valid JSON: {exc}") from exc

    def structure(self, value: Any, tp: type[T]) -> T:
        try:
            return self.converter.structure(value, tp)
        except Exception as exc:
            detail = (
                "; ".join(cattrs.transform_error(exc))
                if isinstance(exc, cattrs.BaseValidationError)
                else str(exc)
            )
            name = getattr(tp, "__name__", repr(tp))
            raise InvalidPayload(f"payload does not fit {name}: {detail}") from exc
