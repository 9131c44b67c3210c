"""The fact world, tool-call formats, the tool-use environment and its rollout driver.

Importing the package registers ``itl/FactRecall-v0`` with Gymnasium (a name, nothing is built).
"""

import gymnasium

ENV_ID = "itl/FactRecall-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="itl_env.env:ToolUseEnv")
