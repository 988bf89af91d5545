//! HTTP-shaped requests and responses.

/// A request: method, path, query, headers and body.
///
/// ```
/// let req = roam_sdk::Request::new("GET", "/items?limit=5");
/// assert_eq!(req.path, "/items");
/// assert_eq!(req.query_param("limit").as_deref(), Some("5"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, starting with `/`.
    pub path: String,
    /// The query string without `?`.
    pub query: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A request for `method` and `target` (path with optional `?query`), no body.
    ///
    /// ```
    /// let req = roam_sdk::Request::new("POST", "/a?b=c");
    /// assert_eq!((req.method.as_str(), req.query.as_str()), ("POST", "b=c"));
    /// ```
    pub fn new(method: &str, target: &str) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            ..Request::default()
        }
    }

    /// The same request with `body`.
    ///
    /// ```
    /// let req = roam_sdk::Request::new("PUT", "/k").with_body("v");
    /// assert_eq!(req.body, b"v");
    /// ```
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// The first value of query parameter `name`, percent-decoded (and
    /// `+` read as a space, as browsers encode forms); bytes that are not
    /// UTF-8 become U+FFFD. [`Request::query`] is the string as sent.
    ///
    /// ```
    /// let req = roam_sdk::Request::new("GET", "/?ttl=30&x&q=caf%C3%A9+au+lait&a%26b=1%3D1");
    /// assert_eq!(req.query_param("ttl").as_deref(), Some("30"));
    /// assert_eq!(req.query_param("x").as_deref(), Some(""));
    /// assert_eq!(req.query_param("q").as_deref(), Some("café au lait"));
    /// assert_eq!(req.query_param("a&b").as_deref(), Some("1=1"));
    /// assert_eq!(req.query_param("y"), None);
    /// ```
    pub fn query_param(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.query_params()
            .find_map(|(k, v)| (k == name).then_some(v))
    }

    /// Every query parameter in order, names and values percent-decoded
    /// as [`Request::query_param`] does.
    ///
    /// ```
    /// let req = roam_sdk::Request::new("GET", "/?a=1&b=%2F&a=2");
    /// let all: Vec<_> = req.query_params().collect();
    /// assert_eq!(all, [("a".into(), "1".into()), ("b".into(), "/".into()), ("a".into(), "2".into())]);
    /// ```
    pub fn query_params(
        &self,
    ) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
        form_urlencoded::parse(self.query.as_bytes())
    }

    /// The first header called `name` (case-insensitive).
    ///
    /// ```
    /// let mut req = roam_sdk::Request::new("GET", "/");
    /// req.headers.push(("Content-Type".into(), "text/plain".into()));
    /// assert_eq!(req.header("content-type"), Some("text/plain"));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 (lossy).
    ///
    /// ```
    /// assert_eq!(roam_sdk::Request::new("POST", "/").with_body("hi").body_text(), "hi");
    /// ```
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Request> {
        let mut r = Reader(bytes);
        let method = r.string()?;
        let path = r.string()?;
        let query = r.string()?;
        let n = r.u32()? as usize;
        let mut headers = Vec::with_capacity(n.min(100));
        for _ in 0..n {
            headers.push((r.string()?, r.string()?));
        }
        let body = r.bytes()?.to_vec();
        Some(Request {
            method,
            path,
            query,
            headers,
            body,
        })
    }
}

/// A response: status, headers and body.
///
/// ```
/// let res = roam_sdk::Response::text(200, "ok").header("x-roam", "1");
/// assert_eq!(res.status, 200);
/// assert_eq!(res.headers[1], ("x-roam".to_string(), "1".to_string()));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    ///
    /// ```
    /// assert_eq!(roam_sdk::Response::new(204).body.len(), 0);
    /// ```
    pub fn new(status: u16) -> Response {
        Response {
            status,
            ..Response::default()
        }
    }

    /// A `text/plain` response.
    ///
    /// ```
    /// let res = roam_sdk::Response::text(404, "no such key");
    /// assert_eq!(res.body, b"no such key");
    /// ```
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// An `application/json` response from already-encoded JSON.
    ///
    /// ```
    /// let res = roam_sdk::Response::json(200, r#"{"n":1}"#);
    /// assert_eq!(res.headers[0].1, "application/json");
    /// ```
    pub fn json(status: u16, json: impl Into<String>) -> Response {
        Response::new(status)
            .header("content-type", "application/json")
            .with_body(json.into())
    }

    /// Add a header.
    ///
    /// ```
    /// let res = roam_sdk::Response::new(200).header("cache-control", "no-store");
    /// assert_eq!(res.headers.len(), 1);
    /// ```
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Set the body.
    ///
    /// ```
    /// let res = roam_sdk::Response::new(200).with_body(vec![1, 2]);
    /// assert_eq!(res.body, [1, 2]);
    /// ```
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The body as UTF-8 (lossy), handy in tests.
    ///
    /// ```
    /// assert_eq!(roam_sdk::Response::text(200, "x").body_text(), "x");
    /// ```
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.body.len());
        out.extend_from_slice(&u32::from(self.status).to_le_bytes());
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (k, v) in &self.headers {
            put(&mut out, k.as_bytes());
            put(&mut out, v.as_bytes());
        }
        put(&mut out, &self.body);
        out
    }
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Reads the ABI's length-prefixed encoding.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn u32(&mut self) -> Option<u32> {
        let b = self.0.get(..4)?;
        let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        self.0 = &self.0[4..];
        Some(v)
    }
    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let b = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(b)
    }
    pub(crate) fn string(&mut self) -> Option<String> {
        Some(String::from_utf8_lossy(self.bytes()?).into_owned())
    }
}
