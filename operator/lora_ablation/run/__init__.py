"""Running an ablation, shared by the operator and the local runner: the schedule (units, two stages), the
budget's admit loop, and the lifecycle that judges every trial. Pure."""
