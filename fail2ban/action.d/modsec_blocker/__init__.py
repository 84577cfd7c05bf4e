"""What the modsec-block fail2ban action (../modsec-block.py) is made of.

Written for the Python fail2ban runs on (3.6 on RHEL 8), imported by the action from its own
directory.  One module per concept, in the order a ban flows through them:

    options      the action's options, checked strictly (Settings)
    addresses    a ticket's address -> the kernel entry that blocks it, or why none may
    batcher      the queue and worker thread: one kernel transaction per batch
    backends/    the registry (BACKENDS, auto detection) and one module per firewall:
                 base (the interface), nft, ipset, legacy (python-iptables)
    fastban      wakes the jail's own ban check when its filter queues a ticket
"""
