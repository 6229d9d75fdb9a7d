-- Messages (send/recv), events (set_event/get_event) and streams.

-- A message sent to a workflow. FIFO per (destination, topic) by message_id.
-- A consumed message keeps its row (consumed_at set) so an idempotent send
-- from outside a workflow stays idempotent after the message was received.
CREATE TABLE messages (
    message_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination_id   text NOT NULL,
    topic            text NOT NULL,          -- '' when sent without a topic
    payload          text NOT NULL,
    created_at       bigint NOT NULL,
    idempotency_key  text UNIQUE,            -- SetWorkflowID around a send from outside
    consumed_at      bigint
);
-- recv takes the oldest unconsumed message of a (destination, topic).
CREATE INDEX messages_unconsumed_idx
    ON messages (destination_id, topic, message_id) WHERE consumed_at IS NULL;

-- The latest value of each event a workflow set.
CREATE TABLE workflow_events (
    workflow_id  text NOT NULL,
    key          text NOT NULL,
    value        text NOT NULL,
    updated_at   bigint NOT NULL,
    PRIMARY KEY (workflow_id, key)
);

-- Values written to a workflow's streams. A write from a workflow uses its
-- step ID as the offset, so replay writes the same row; closing a stream
-- writes a row with closed = true and no value.
CREATE TABLE streams (
    workflow_id  text NOT NULL,
    key          text NOT NULL,
    "offset"     integer NOT NULL,
    value        text,
    closed       boolean NOT NULL DEFAULT false,
    created_at   bigint NOT NULL,
    PRIMARY KEY (workflow_id, key, "offset")
);
