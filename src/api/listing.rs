//! One model of a list request for every service: the limit, the marker, several sort keys
//! with their directions, and the link to the next page. Each service keeps its own words
//! for a bad request and its own shape of link (a [`Dialect`]); the logic is here once.
//!
//! Lists whose rows the database filters (servers) hand a typed [`ListSpec`] to `src/db`,
//! which turns it into ORDER BY, a keyset after the marker and LIMIT. Lists whose visibility
//! rules run in Rust (flavors, keypairs, volumes, images, neutron's resources) page the
//! filtered rows with [`page`].

use std::cmp::Ordering;

use serde_json::{json, Value};

use super::fault::{ApiError, ApiResult};
pub use crate::db::listing::{Direction, ListSpec, SortColumn};

/// The most items one page holds, unless a service says otherwise (nova's `[api] max_limit`,
/// cinder's `osapi_max_limit`, glance's `api_limit_max`).
pub const MAX_LIMIT: usize = 1000;

/// Whose words a list speaks: its errors and its next link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// nova: `<collection>_links` when a page is full; a limit above the maximum is capped.
    Nova,
    /// neutron: `<collection>_links` when more rows follow; no maximum.
    Neutron,
    /// glance: `next`, a path with the marker, when a page is full; 25 by default.
    Glance,
    /// cinder: `<collection>_links` when a page is full.
    Cinder,
}

/// A request's query, in order, with repeated keys kept (`sort_key=a&sort_key=b`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn first(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }
    /// The last value of `key`: what a Python service reads from a repeated parameter.
    pub fn last(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

/// Limit and marker of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paging {
    pub limit: Option<usize>,
    pub marker: Option<String>,
}

/// The keys of a list's request that are paging and sorting, not filters.
pub const CONTROL_PARAMS: &[&str] = &["limit", "marker", "sort_key", "sort_dir"];

impl Dialect {
    /// `limit` as the service reads it; absent is the service's default.
    pub fn limit(self, raw: Option<&str>) -> ApiResult<Option<usize>> {
        let Some(raw) = raw else {
            return Ok(match self {
                Dialect::Nova | Dialect::Cinder => Some(MAX_LIMIT),
                Dialect::Glance => Some(25),
                Dialect::Neutron => None,
            });
        };
        match self {
            // nova's schema: `^[0-9]*$`; more than the maximum is capped, and 0 is a page of
            // nothing (nova takes `min(max_limit, limit)` and its lists stop at 0 rows).
            Dialect::Nova => match raw.parse::<u64>() {
                Ok(n) if !raw.starts_with('+') => Ok(Some(usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT))),
                _ => Err(ApiError::bad_request(format!(
                    "Invalid input for query parameters limit. Value: {raw}. '{raw}' does not match '^[0-9]*$'"
                ))),
            },
            // neutron: a limit of 0 or less is no limit.
            Dialect::Neutron => match raw.parse::<i64>() {
                Ok(n) if n > 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
                Ok(_) => Ok(None),
                Err(_) => {
                    Err(ApiError::bad_request(format!("Invalid input for limit. Reason: '{raw}' is not an integer."))
                        .with_kind("InvalidInput"))
                }
            },
            Dialect::Glance | Dialect::Cinder => match raw.parse::<i64>() {
                Ok(n) if n < 0 => Err(ApiError::bad_request("limit param must be positive")),
                Ok(n) => Ok(Some(usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT))),
                Err(_) => Err(ApiError::bad_request("limit param must be an integer")),
            },
        }
    }

    /// The 400 (404 for neutron) of a marker that names nothing; `what` is the resource
    /// ("volume", "Image", ...) for the services that name it.
    pub fn marker_not_found(self, what: &str, marker: &str) -> ApiError {
        match self {
            Dialect::Nova => ApiError::bad_request(format!("marker [{marker}] not found")),
            Dialect::Neutron => ApiError::not_found(format!("Marker {marker} could not be found.")),
            Dialect::Glance => ApiError::bad_request(format!("Invalid marker. {what} {marker} could not be found.")),
            Dialect::Cinder => ApiError::bad_request(format!("Invalid marker: {what} {marker} could not be found.")),
        }
    }

    fn bad_sort_dir(self, dir: &str) -> ApiError {
        match self {
            Dialect::Nova | Dialect::Cinder => {
                ApiError::bad_request("Invalid input received: Unknown sort direction, must be 'desc' or 'asc'")
            }
            Dialect::Neutron => ApiError::bad_request(format!(
                "Invalid input for sort_dir. Reason: '{dir}' is not a valid sort direction."
            ))
            .with_kind("InvalidInput"),
            Dialect::Glance => ApiError::bad_request(format!("Invalid sort direction: {dir}")),
        }
    }

    /// The 400 of a sort key the list does not allow; `allowed` are its keys' names.
    pub fn bad_sort_key(self, key: &str, allowed: &[&str]) -> ApiError {
        match self {
            Dialect::Nova => {
                let list: Vec<String> = allowed.iter().map(|k| format!("'{k}'")).collect();
                ApiError::bad_request(format!(
                    "Invalid input for query parameters sort_key. Value: {key}. '{key}' is not one of [{}]",
                    list.join(", ")
                ))
            }
            Dialect::Neutron => {
                ApiError::bad_request(format!("Invalid input for sort_key. Reason: '{key}' is not a valid sort key."))
                    .with_kind("InvalidInput")
            }
            Dialect::Glance => ApiError::bad_request(format!(
                "Invalid sort key: {key}. It must be one of the following: {}.",
                allowed.join(", ")
            )),
            Dialect::Cinder => ApiError::bad_request(format!("Invalid input received: Invalid sort key {key}")),
        }
    }
}

/// The limit and marker of `params`.
pub fn paging(params: &Params, dialect: Dialect) -> ApiResult<Paging> {
    Ok(Paging { limit: dialect.limit(params.first("limit"))?, marker: params.first("marker").map(str::to_string) })
}

pub fn direction(dir: &str, dialect: Dialect) -> ApiResult<Direction> {
    match dir {
        "asc" => Ok(Direction::Asc),
        "desc" => Ok(Direction::Desc),
        other => Err(dialect.bad_sort_dir(other)),
    }
}

/// The `sort_key`/`sort_dir` pairs of `params`, by name, as nova's `process_sort_params`
/// pairs them: each key takes the direction at its place, or the first direction given, or
/// `default`; more directions than keys is a 400. Neutron wants as many of each.
pub fn sort_names(params: &Params, dialect: Dialect, default: Direction) -> ApiResult<Vec<(String, Direction)>> {
    let keys = params.all("sort_key");
    let dirs = params.all("sort_dir").into_iter().map(|d| direction(d, dialect)).collect::<ApiResult<Vec<_>>>()?;
    if dialect == Dialect::Neutron && keys.len() != dirs.len() {
        return Err(
            ApiError::bad_request("The number of sort_keys and sort_dirs must be same").with_kind("HTTPBadRequest")
        );
    }
    if dirs.len() > keys.len() {
        return Err(ApiError::bad_request("Invalid input received: Sort direction size exceeds sort key size"));
    }
    let fallback = dirs.first().copied().unwrap_or(default);
    Ok(keys.iter().enumerate().map(|(i, k)| (k.to_string(), dirs.get(i).copied().unwrap_or(fallback))).collect())
}

/// Sort pairs by name turned into the list's typed keys; a name the list does not know is
/// the dialect's 400.
pub fn typed_sort<K: SortColumn>(names: Vec<(String, Direction)>, dialect: Dialect) -> ApiResult<Vec<(K, Direction)>> {
    names
        .into_iter()
        .map(|(name, dir)| match K::from_name(&name) {
            Some(k) => Ok((k, dir)),
            None => Err(dialect.bad_sort_key(&name, &K::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>())),
        })
        .collect()
}

/// Orders `a` and `b` by each key in turn; `cmp` compares one key.
pub fn compare_by<T, K: Copy>(a: &T, b: &T, sort: &[(K, Direction)], cmp: impl Fn(&T, &T, K) -> Ordering) -> Ordering {
    for (key, dir) in sort {
        let ord = cmp(a, b, *key);
        let ord = if *dir == Direction::Desc { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// How a page ends, which decides its next link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageEnd {
    /// The page holds as many as the limit asked for.
    pub full: bool,
    /// Rows follow the page.
    pub more: bool,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub end: PageEnd,
}

/// Where a page begins in an ordered list.
pub enum Start<'a, T> {
    First,
    /// After the row with this id; none is the marker error.
    AfterId(&'a str),
    /// After the first row that sorts after this one (glance: the marker row may have left
    /// the list since the previous page).
    AfterRow(&'a dyn Fn(&T) -> bool),
}

/// The page of `items` (already filtered and ordered) after `start`, at most `limit` long.
pub fn page<T>(items: Vec<T>, start: Start<'_, T>, limit: Option<usize>, id: impl Fn(&T) -> &str) -> Option<Page<T>> {
    let from = match start {
        Start::First => 0,
        Start::AfterId(marker) => items.iter().position(|i| id(i) == marker)? + 1,
        Start::AfterRow(after) => items.iter().position(after).unwrap_or(items.len()),
    };
    let mut rest: Vec<T> = items.into_iter().skip(from).collect();
    let more = limit.is_some_and(|l| rest.len() > l);
    if let Some(l) = limit {
        rest.truncate(l);
    }
    let full = limit.is_some_and(|l| l > 0 && rest.len() == l);
    Some(Page { items: rest, end: PageEnd { full, more } })
}

/// The page of `items` after the row whose id is the request's marker; a marker that names
/// no row is `not_found(marker)`.
pub fn page_by_id<T>(
    items: Vec<T>,
    paging: &Paging,
    id: impl Fn(&T) -> &str,
    not_found: impl FnOnce(&str) -> ApiError,
) -> ApiResult<Page<T>> {
    match &paging.marker {
        Some(m) => page(items, Start::AfterId(m), paging.limit, id).ok_or_else(|| not_found(m)),
        None => page(items, Start::First, paging.limit, id).ok_or_else(|| not_found("")),
    }
}

/// Percent-encodes a query component (RFC 3986's unreserved characters stay).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The query of the next page: the request's own parameters with the marker replaced.
pub fn next_query(params: &Params, marker: &str) -> String {
    let mut q: Vec<String> =
        params.0.iter().filter(|(k, _)| k != "marker").map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
    q.push(format!("marker={}", encode(marker)));
    q.join("&")
}

/// Sets the next-page link of a page that ends as `end` on `body`, in the dialect's shape: `url` is the
/// collection's address and `collection` its key; `last_id` the page's last row.
pub fn add_next_link(
    body: &mut Value,
    dialect: Dialect,
    collection: &str,
    url: &str,
    params: &Params,
    end: PageEnd,
    last_id: Option<&str>,
) {
    let Some(link) = next_link(dialect, url, params, end, last_id) else { return };
    match dialect {
        Dialect::Glance => body["next"] = link["href"].clone(),
        _ => body[format!("{collection}_links")] = json!([link]),
    }
}

/// The next page's link (`{"rel": "next", "href": ...}`) of a page that ends as `end`, when the
/// dialect gives one; for bodies that name their links otherwise (nova's instance actions
/// call them `links`).
pub fn next_link(dialect: Dialect, url: &str, params: &Params, end: PageEnd, last_id: Option<&str>) -> Option<Value> {
    let wanted = match dialect {
        Dialect::Neutron => end.more,
        Dialect::Nova | Dialect::Glance | Dialect::Cinder => end.full,
    };
    let last = last_id.filter(|_| wanted)?;
    Some(json!({"rel": "next", "href": format!("{url}?{}", next_query(params, last))}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Params {
        Params(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn limits_in_each_dialect() {
        let nova = |v: &str| paging(&p(&[("limit", v)]), Dialect::Nova).map(|x| x.limit);
        assert_eq!(nova("2").unwrap(), Some(2));
        assert_eq!(nova("5000").unwrap(), Some(MAX_LIMIT), "nova caps silently");
        assert_eq!(nova("0").unwrap(), Some(0), "nova lists nothing for 0");
        for bad in ["-1", "x", "1.5", "", "+3"] {
            let e = nova(bad).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains("does not match '^[0-9]*$'"), "{bad}: {}", e.message);
        }
        assert_eq!(paging(&p(&[]), Dialect::Nova).unwrap().limit, Some(MAX_LIMIT));
        assert_eq!(paging(&p(&[]), Dialect::Neutron).unwrap().limit, None);
        assert_eq!(paging(&p(&[]), Dialect::Glance).unwrap().limit, Some(25));
        assert_eq!(paging(&p(&[("limit", "-3")]), Dialect::Neutron).unwrap().limit, None);
        assert!(paging(&p(&[("limit", "y")]), Dialect::Neutron).unwrap_err().message.contains("not an integer"));
        assert_eq!(
            paging(&p(&[("limit", "-1")]), Dialect::Cinder).unwrap_err().message,
            "limit param must be positive"
        );
        assert_eq!(paging(&p(&[("limit", "9999")]), Dialect::Glance).unwrap().limit, Some(MAX_LIMIT));
        assert_eq!(paging(&p(&[("marker", "m")]), Dialect::Nova).unwrap().marker.as_deref(), Some("m"));
    }

    #[test]
    fn sort_pairs_as_nova_pairs_them() {
        let got = sort_names(
            &p(&[("sort_key", "a"), ("sort_key", "b"), ("sort_dir", "asc")]),
            Dialect::Nova,
            Direction::Desc,
        )
        .unwrap();
        assert_eq!(got, vec![("a".to_string(), Direction::Asc), ("b".to_string(), Direction::Asc)]);
        let got = sort_names(&p(&[("sort_key", "a")]), Dialect::Nova, Direction::Desc).unwrap();
        assert_eq!(got, vec![("a".to_string(), Direction::Desc)]);
        let e = sort_names(&p(&[("sort_key", "a"), ("sort_dir", "up")]), Dialect::Nova, Direction::Desc).unwrap_err();
        assert!(e.message.contains("must be 'desc' or 'asc'"));
        let e = sort_names(&p(&[("sort_dir", "asc")]), Dialect::Nova, Direction::Desc).unwrap_err();
        assert!(e.message.contains("exceeds sort key size"));
        assert!(sort_names(&p(&[("sort_key", "a")]), Dialect::Neutron, Direction::Asc).is_err());
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum K {
        Name,
    }
    impl SortColumn for K {
        const ALL: &'static [(&'static str, K)] = &[("name", K::Name)];
        fn column(self) -> Option<&'static str> {
            Some("name")
        }
    }

    #[test]
    fn only_known_keys_become_typed() {
        let ok = typed_sort::<K>(vec![("name".into(), Direction::Asc)], Dialect::Nova).unwrap();
        assert_eq!(ok, vec![(K::Name, Direction::Asc)]);
        let e = typed_sort::<K>(vec![("name; DROP".into(), Direction::Asc)], Dialect::Nova).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid input for query parameters sort_key. Value: name; DROP. 'name; DROP' is not one of ['name']"
        );
        let e = typed_sort::<K>(vec![("x".into(), Direction::Asc)], Dialect::Glance).unwrap_err();
        assert_eq!(e.message, "Invalid sort key: x. It must be one of the following: name.");
    }

    #[test]
    fn pages_and_links() {
        let items = vec!["a", "b", "c", "d"];
        let pg = page(items.clone(), Start::AfterId("b"), Some(1), |s| s).unwrap();
        assert_eq!((pg.items.clone(), pg.end), (vec!["c"], PageEnd { full: true, more: true }));
        assert!(page(items.clone(), Start::AfterId("zz"), Some(1), |s| s).is_none());
        let last = page(items.clone(), Start::AfterId("c"), Some(1), |s| s).unwrap();
        assert_eq!(last.end, PageEnd { full: true, more: false });
        let after = |s: &&str| *s > "bb";
        assert_eq!(page(items, Start::AfterRow(&after), None, |s| s).unwrap().items, vec!["c", "d"]);

        let params = p(&[("name", "^x y"), ("limit", "1"), ("marker", "old")]);
        let mut body = json!({});
        add_next_link(&mut body, Dialect::Nova, "servers", "http://h/compute/v2.1/servers", &params, pg.end, Some("c"));
        assert_eq!(body["servers_links"][0]["href"], "http://h/compute/v2.1/servers?name=%5Ex%20y&limit=1&marker=c");
        assert_eq!(body["servers_links"][0]["rel"], "next");
        let mut body = json!({});
        add_next_link(&mut body, Dialect::Glance, "images", "/v2/images", &params, pg.end, Some("c"));
        assert_eq!(body["next"], "/v2/images?name=%5Ex%20y&limit=1&marker=c");
        let mut body = json!({});
        add_next_link(&mut body, Dialect::Neutron, "ports", "u", &params, last.end, Some("d"));
        assert_eq!(body, json!({}), "neutron links only when more rows follow");
        add_next_link(&mut body, Dialect::Cinder, "volumes", "u", &params, last.end, Some("d"));
        assert_eq!(body["volumes_links"][0]["href"], "u?name=%5Ex%20y&limit=1&marker=d");
    }

    #[test]
    fn markers_in_each_dialect() {
        assert_eq!(Dialect::Nova.marker_not_found("", "m").message, "marker [m] not found");
        assert_eq!(Dialect::Neutron.marker_not_found("", "m").status, 404);
        assert_eq!(
            Dialect::Glance.marker_not_found("Image", "m").message,
            "Invalid marker. Image m could not be found."
        );
        assert_eq!(
            Dialect::Cinder.marker_not_found("volume", "m").message,
            "Invalid marker: volume m could not be found."
        );
    }
}
