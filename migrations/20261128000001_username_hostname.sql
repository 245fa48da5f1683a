-- A user's site host name is the username with '_' as '-' (`<user>.<HOSTD_SITES_DOMAIN>`):
-- two usernames that differ only there would share one origin, so they are one name.
create unique index users_hostname_key on users (replace(username, '_', '-'));
