-- A replica finds the server of an agent it has not seen yet (it enrolled on another replica a moment ago).
CREATE INDEX servers_agent_id ON servers ((record->>'agent_id'));
