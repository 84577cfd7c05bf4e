"""Fleet bans: every server's fail2ban bans, shared through one MariaDB / Galera database.

Data flow, one module per step:

* ``f2bdb``: fail2ban's own SQLite ``bans`` table, read-only, by rowid → ``rows.LocalBan``
* ``publish``: new local bans still in force → the shared table, cursor kept twice
* ``store``: every SQL statement a node runs (PyMySQL, parameterised), ``schema`` the
  versioned tables and their migrations, ``target`` the URL, option file and TLS
* ``apply``: rows of the other nodes → ``validate`` (hostile input; ignoreip, own
  addresses, trusted proxies) → ``f2bsocket`` (``set modsec-fleet banip``), unban at the end
* ``node``: the daemon's loop; ``status`` and ``cli``: ``modsec-tools fleet ...``

docs/fleet.md describes set-up, the trust model and the limits.
"""
