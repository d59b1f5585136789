"""Resource ids: EC2's long shape, made in creation order, never repeated."""

from __future__ import annotations

import itertools
import os
import re
import threading

from broker import ids


def test_an_id_has_ec2s_long_shape_for_every_kind() -> None:
    for kind, prefix in ids.PREFIXES.items():
        made = ids.new_id(kind)
        assert re.fullmatch(rf"{prefix}-0[0-9a-f]{{16}}", made), made
        assert ids.is_valid(kind, made)


def test_ids_made_one_after_another_sort_one_after_another() -> None:
    made = [ids.new_id("instance") for _ in range(5000)]
    assert len(set(made)) == len(made)
    # the count may pass 2**32 once, where it starts again at 0; apart from that one step
    # each id is above the one before
    steps_down = sum(1 for a, b in itertools.pairwise(made) if b < a)
    assert steps_down <= 1


def test_threads_sharing_the_count_never_repeat_an_id() -> None:
    found: list[list[str]] = []

    def make() -> None:
        found.append([ids.new_id("volume") for _ in range(2000)])

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for batch in found for i in batch]
    assert len(set(every)) == 8000


def test_a_forked_child_counts_from_a_new_start() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.close(read)
        os.write(write, ids.new_id("instance").encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = ids.new_id("instance")
    assert child != mine
    # same second, most likely: then only a count of its own keeps them apart
    assert abs(int(child[-8:], 16) - int(mine[-8:], 16)) > 1
