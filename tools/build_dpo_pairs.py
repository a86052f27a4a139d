"""The seed's entry point for the DPO pairs; the same as `askdraft pairs`.

    python tools/build_dpo_pairs.py --drafts data/drafts/cot_phaseB/train.jsonl \
        --gold data/strategyqa_train_cot.jsonl --tokenizer models/cot_phaseB/merged \
        [--mode draft|answer] -o data/pairs.jsonl
"""
import sys

from askdraft.pairs import main

if __name__ == "__main__":
    sys.exit(main())
