"""`python -m lora_ablation.cli`: the same as the `lora-ablation` command."""

import sys

from lora_ablation.cli import main

sys.exit(main())
