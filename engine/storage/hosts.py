"""Which exports hosts have open over NBD: what a restore (and a clone's deletion) checks before
it changes a volume under them."""

import threading
from collections import Counter


class Hosts:
    def __init__(self) -> None:
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def opened(self, export: str) -> None:
        with self._lock:
            self._open[export] += 1

    def closed(self, export: str) -> None:
        with self._lock:
            self._open[export] -= 1
            if self._open[export] <= 0:
                del self._open[export]

    def count(self, export: str) -> int:
        with self._lock:
            return self._open.get(export, 0)
