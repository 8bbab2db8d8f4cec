-- What reached a chat, part by part (a message, an album, the buttons under it), recorded as soon as the
-- platform accepted it and apart from recording the job: a re-delivery (after a crash, a failed post or
-- a restart) never posts again what is here.
CREATE TABLE image.delivery_parts (
    generation_id text        NOT NULL REFERENCES image.generations (id),
    part          text        NOT NULL,   -- the front end's name for it, e.g. 'album', 'buttons', 'image-0'
    message_id    text,
    file_refs     jsonb       NOT NULL DEFAULT '{}',   -- image id -> platform file reference
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (generation_id, part)
);
