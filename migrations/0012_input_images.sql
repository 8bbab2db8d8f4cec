-- Pictures a request starts from (an edit): kept in the image store under inputs/<sha256>, recorded here
-- with their generation. A regenerated edit records the same files again (no copy: the key is the content).
CREATE TABLE image.input_images (
    id            text PRIMARY KEY,
    generation_id text        NOT NULL REFERENCES image.generations (id),
    index         smallint    NOT NULL,
    storage_key   text        NOT NULL,
    sha256        text        NOT NULL,
    mime_type     text        NOT NULL,
    width         integer     NOT NULL,
    height        integer     NOT NULL,
    bytes         integer     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (generation_id, index)
);
-- Whether a stored file is still wanted, when a refused request's file is cleaned up.
CREATE INDEX input_images_storage_key_idx ON image.input_images (storage_key);

-- A remix: a new prompt on one result image (parent_image_id), charged like any request.
ALTER TABLE image.generations DROP CONSTRAINT generations_kind_check;
ALTER TABLE image.generations ADD CONSTRAINT generations_kind_check
    CHECK (kind IN ('imagine', 'regenerate', 'variation', 'remix'));
