"""The link to the dashboard: wire format, delivery queue, the session on one socket, redial backoff.

Kept together because delivery guarantees (ordering, replay, evidence of delivery) are a property of
these modules jointly (dial, sockets, frames, session, outbox, journal, protocol, backoff);
nothing outside ``link`` touches the socket.
"""
