"""How ``bridge plan apply`` goes through its steps, without a bridge: rooms side by side,
each room's steps in order, a refused step skipping the rest of its room only, and the
"[n/total]" progress prefix on a terminal. Unit tier."""

from __future__ import annotations

import io

from bridge.admin.plan.apply import Chain, Runner, Step
from bridge.admin.plan.client import ApiError


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def chain(done: list[str], *lines: str, refuse: str | None = None) -> Chain:
    def step(line: str) -> Step:
        async def run() -> None:
            if line == refuse:
                raise ApiError(409, "BRIDGE_CONFLICT", "Already linked to another room.")
            done.append(line)
        return Step(line, run)
    return Chain([step(line) for line in lines])


async def test_a_refused_step_skips_the_rest_of_its_room_only() -> None:
    done: list[str] = []
    out = Terminal()
    runner = Runner(5, out, progress=True)
    await runner.department(chain(done, "+ create space #s"), [
        chain(done, "+ create room #a", "+ link slack x/C1 -> #a", "+ subscribe e -> #a",
              refuse="+ link slack x/C1 -> #a"),
        chain(done, "+ create room #b")])
    assert done == ["+ create space #s", "+ create room #a", "+ create room #b"]
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/5] + create space #s"
    assert "! failed: + link slack x/C1 -> #a: Already linked to another room. (1 later " \
           "step(s) of this room skipped)" in lines
    assert [line for line in lines if line.startswith("[")] == [
        "[1/5] + create space #s", "[2/5] + create room #a", "[3/5] + create room #b"]
    assert runner.done == 3 and len(runner.failures) == 1


async def test_no_progress_lines_when_not_on_a_terminal_and_a_failed_space() -> None:
    done: list[str] = []
    out = io.StringIO()
    runner = Runner(3, out, progress=False)
    await runner.department(chain(done, "+ create space #s", refuse="+ create space #s"),
                            [chain(done, "+ create room #a", "+ add #a to space #s")])
    assert done == []  # the rooms wait for their space
    assert out.getvalue().splitlines() == [
        "! failed: + create space #s: Already linked to another room."]
    assert len(runner.failures) == 2
