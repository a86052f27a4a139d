"""The seed's entry point for attention attribution; the same as `askdraft attribution`.

    python tools/attention_tools.py --base models/merged --adapter models/dpo_phaseC \
        --drafts data/drafts/dpo_phaseC/dev.jsonl --dev data/strategyqa_dev.jsonl \
        --limit 50 --out results/attribution_dpo_phaseC.json --heatmaps results/heatmaps
"""
import sys

from askdraft.attribution import main

if __name__ == "__main__":
    sys.exit(main())
