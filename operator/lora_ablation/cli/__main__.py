"""`python -m lora_ablation.cli`: the same as the `lora-ablation` command."""

import sys

from lora_ablation.cli import console_main

sys.exit(console_main())
