"""The store: accounts, keys, the append-only ledger, holds and usage records.

``facade`` is the one interface the rest of the gateway uses (plain values and ``records`` in and
out; nothing of HTTP); ``ledger`` holds the money statements, ``group_commit`` batches settlements
into one durable commit (reaching aiosqlite's thread through ``_aiosqlite_adapter``, the one
module that uses aiosqlite's private attributes), ``schema`` the database file, its migrations and
pragmas. It imports
``errors``, ``records``, ``billing.pricing`` and its database library.
"""
