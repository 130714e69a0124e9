"""Billing: what a request costs and how credit is bought.

``pricing`` is pure (usage x price table -> integer micro-USD, the hold for a request, the price
list); it imports only ``config`` and ``ir``. ``payments`` talks to Stripe through the official
library (Checkout Sessions, signed webhooks), imported only when a Stripe secret is configured.
"""
