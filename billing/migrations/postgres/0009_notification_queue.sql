-- Notifications (issue #16): indexes that keep a delivery claim's cost independent of the
-- backlog. The claim walks the channels that have queued deliveries (a skip scan of the first
-- index), takes at most the per-channel cap of each one's due deliveries in order (a range of the
-- same index), and counts what is in flight per channel from the second, which holds only the
-- deliveries being sent (a few per channel), so a backlog of millions is never ranked whole. The
-- second also finds what one claim took (by its lease token) without reading the whole table.
CREATE INDEX notification_deliveries_queue
    ON notification_deliveries (channel_id, next_attempt_ms, id)
    WHERE state IN ('PENDING', 'RESENDING');
CREATE INDEX notification_deliveries_sending
    ON notification_deliveries (lease_token)
    WHERE state = 'SENDING';
