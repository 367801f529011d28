"""Fleet configuration: the wanted settings (profiles) and the reconciler that gets every tracker there.

- `profiles`: checking a profile, which values apply to one tracker, wanted against actual (pure).
- `reconciler`: in the gateway that holds a tracker's connection, the commands that bring its
  settings to the wanted values, and `devices.config_state`.
"""
