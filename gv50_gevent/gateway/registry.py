"""Which connection holds which IMEI in this process. One connection per IMEI: a second one replaces
the first (a tracker that reconnects after a half-open drop must not be locked out by its ghost)."""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

S = TypeVar("S")


class ConnectionRegistry(Generic[S]):
    def __init__(self) -> None:
        self._by_imei: dict[str, S] = {}

    def bind(self, imei: str, session: S) -> S | None:
        """Make `session` the holder of `imei`; returns the session it replaced, if any."""
        old = self._by_imei.get(imei)
        self._by_imei[imei] = session
        return old if old is not session else None

    def unbind(self, imei: str, session: S) -> bool:
        if self._by_imei.get(imei) is session:
            del self._by_imei[imei]
            return True
        return False

    def get(self, imei: str) -> S | None:
        return self._by_imei.get(imei)

    def __len__(self) -> int:
        return len(self._by_imei)

    def __iter__(self) -> Iterator[S]:
        return iter(list(self._by_imei.values()))
