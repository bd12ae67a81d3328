-- A span is stored once: RabbitMQ delivers a `record_spans` cast again when its ack was lost
-- (a broker restart), and `trace` must not show that batch twice. Span ids are unique per
-- process run (a random high half and a counter), so (request_id, span_id) names a span.
DELETE FROM trace_spans WHERE id NOT IN (SELECT min(id) FROM trace_spans GROUP BY request_id, span_id);
CREATE UNIQUE INDEX trace_spans_one_each ON trace_spans(request_id, span_id);
-- It leads with request_id, so it also serves the lookups by request the old index did; one
-- index to maintain per span insert, as before.
DROP INDEX trace_spans_request;
