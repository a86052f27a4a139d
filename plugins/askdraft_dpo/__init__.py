"""askdraft_dpo: axolotl plugin for phase C (rl: dpo with a per-epoch beta / Cal / Dr schedule).

In a recipe:
    rl: dpo
    plugins:
      - askdraft_dpo.AskDraftDPOPlugin
    askdraft_schedule: [...]          # keys: see args.py; losses: see losses.py

The plugin class (plugin.py) is loaded when axolotl asks for it, so that `askdraft_dpo.rows`, the
pairs-file reader the askdraft tools share, imports without axolotl.
"""
PLUGIN = "askdraft_dpo.AskDraftDPOPlugin"


def __getattr__(name):
    if name == "AskDraftDPOPlugin":
        from .plugin import AskDraftDPOPlugin
        return AskDraftDPOPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
