"""Commands to the trackers: MongoDB -> watcher -> registry -> dispatcher -> session -> ACK -> MongoDB.

- `store`: every read and write of the `commands` collection, each transition a compare-and-set.
- `registry`: which open commands exist, per IMEI, in memory (a cache; MongoDB is the truth).
- `watcher`: the change stream on `commands` that keeps the registry current, with a resumable token.
- `dispatcher`: one greenlet per connected device with open commands: send, wait for ACK, resend.
- `service`: the wiring, and the hooks the gateway calls (`CommandHooks`).
"""
