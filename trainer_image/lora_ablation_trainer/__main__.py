import sys

from lora_ablation_trainer.cli import main

sys.exit(main())
