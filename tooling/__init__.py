"""Herald's tooling: the `herald` CLI, the local stack, the mailbox (local SMTP peer) and the bench."""
