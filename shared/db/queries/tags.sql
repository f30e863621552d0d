-- Tags and fuzzy tag search.

-- name: search_tags(query, limit)
-- Design query 5. `%` keeps the design's meaning (similarity >= pg_trgm.similarity_threshold, 0.3
-- by default); the order is by trigram distance `<->` (= 1 - similarity), which the GiST index of
-- migration 0002 returns nearest-first, so LIMIT stops the scan after `limit` rows even when the
-- query matches most tags (the design's 'product' case, where the GIN index was skipped).
-- Ties at equal distance come in index order; callers wanting a stable order sort the page.
SELECT t.tag_id, t.name, similarity(t.name, :query::text) AS similarity
FROM tags t
WHERE t.name % :query::text
ORDER BY t.name <-> :query::text
LIMIT :limit;

-- name: search_user_tags(user_id, query, limit)
-- Design query 5 for one user: only the tags this user has used (user_tags, migration 0008), so no
-- user sees another's tag names. A user has hundreds of tags, not millions: the similarity of each is
-- computed directly (the primary key gives the user's tags), no trigram index needed.
SELECT t.tag_id, t.name, similarity(t.name, :query::text) AS similarity
FROM user_tags ut
JOIN tags t ON t.tag_id = ut.tag_id
WHERE ut.user_id = :user_id AND t.name % :query::text
ORDER BY t.name <-> :query::text, t.name
LIMIT :limit;

-- name: get_tag_names(names)
-- Range, not `=`, so the unique B-tree serves it and not a trigram index (see jobs.sql).
SELECT t.tag_id, t.name
FROM unnest(:names::varchar[]) AS n
JOIN tags t ON t.name >= n AND t.name <= n
ORDER BY t.name;
