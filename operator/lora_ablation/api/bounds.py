"""Number and string bounds on what trial images write (result.json, stage-one.json, failure.json).

Those files are read by the shared operator and feed sums, means and sorts (statistics.fmean and math.fsum raise
OverflowError once a sum leaves the float range, and squares in a standard deviation leave it far sooner), so a
figure is not only finite but within a range no real trial comes near: then any sum over a million trials, and
any square in a spread, stays finite with room to spare. A file breaking a bound reads as invalid."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_SCORE = 1e6  # scores are fractions or negative losses; losses are nats per token (uniform on 256k tokens: 12.5)
MAX_SECONDS = 1e9  # ~31 years of device time for one trial
MAX_MILLIS = 1e9  # ~11 days per token
MAX_PERCENT = 1e6  # an overhead of 10,000x
MAX_STEPS = 10**9  # optimizer steps and eval records
MAX_TEXT = 4000  # a message (a Job termination message is at most 4096 bytes)
MAX_NAME = 253  # a Kubernetes object name; trial and ablation names are shorter
MAX_SHORT = 64  # metric names, RFC 3339 times, variants

Score = Annotated[float, Field(ge=-MAX_SCORE, le=MAX_SCORE)]
Loss = Annotated[float, Field(ge=-MAX_SCORE, le=MAX_SCORE)]  # not >= 0: a trainer's rounding must not void a trial
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
Millis = Annotated[float, Field(ge=0, le=MAX_MILLIS)]
Percent = Annotated[float, Field(ge=-MAX_PERCENT, le=MAX_PERCENT)]
Steps = Annotated[int, Field(ge=0, le=MAX_STEPS)]
ExitCode = Annotated[int, Field(ge=0, le=255)]  # what a process exit status can be
Name = Annotated[str, Field(max_length=MAX_NAME)]
Short = Annotated[str, Field(max_length=MAX_SHORT)]
