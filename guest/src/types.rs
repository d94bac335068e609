//! The contract's types, re-exported from the bindings, with constructors for tests and policies.

pub use crate::bindings::stellaops::registry_policy::types::{
    Caller, Decision, Denial, Grant, Request, Resource,
};

impl Caller {
    /// A caller with only a subject; add the rest with the builder methods.
    pub fn new(subject: impl Into<String>) -> Self {
        Caller {
            subject: subject.into(),
            client_id: None,
            tenant: None,
            plan: None,
            license: None,
            scopes: Vec::new(),
            claims_json: "{}".to_owned(),
        }
    }

    /// Sets `stellaops:plan`.
    pub fn with_plan(mut self, plan: impl Into<String>) -> Self {
        self.plan = Some(plan.into());
        self
    }

    /// Sets `stellaops:tenant`.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sets `stellaops:license`.
    pub fn with_license(mut self, license: impl Into<String>) -> Self {
        self.license = Some(license.into());
        self
    }

    /// Sets `client_id`.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Sets the full claim set a custom rule can read with [`Caller::claims`].
    pub fn with_claims(mut self, claims: serde_json::Value) -> Self {
        self.claims_json = claims.to_string();
        self
    }

    /// Every claim of the caller's Authority token. The host always sends a JSON object; anything
    /// unparsable reads as an empty object.
    pub fn claims(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&self.claims_json).unwrap_or_default()
    }

    /// The value a `{name}` placeholder of a [`RepoPattern`](crate::RepoPattern) stands for.
    pub fn placeholder(&self, name: &str) -> Option<&str> {
        match name {
            "sub" => Some(self.subject.as_str()),
            "tenant" => self.tenant.as_deref(),
            "plan" => self.plan.as_deref(),
            "client_id" => self.client_id.as_deref(),
            _ => None,
        }
    }
}

impl Resource {
    /// `Resource::new("repository", "team/app", ["pull", "push"])`.
    pub fn new<A: Into<String>>(
        type_: impl Into<String>,
        name: impl Into<String>,
        actions: impl IntoIterator<Item = A>,
    ) -> Self {
        Resource {
            type_: type_.into(),
            name: name.into(),
            actions: actions.into_iter().map(Into::into).collect(),
        }
    }

    /// The same resource with other actions: what a policy grants for a request.
    pub fn with_actions(&self, actions: Vec<String>) -> Self {
        Resource { type_: self.type_.clone(), name: self.name.clone(), actions }
    }
}

impl std::fmt::Display for Resource {
    /// The Docker scope syntax: `repository:team/app:pull,push`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.type_, self.name, self.actions.join(","))
    }
}

impl Request {
    /// A request, as the host would send it.
    pub fn new(caller: Caller, service: impl Into<String>, resources: Vec<Resource>) -> Self {
        Request { caller, service: service.into(), resources }
    }
}

impl Decision {
    /// Grant these resources (each a subset of what was requested), with no note.
    pub fn grant(resources: Vec<Resource>) -> Self {
        Decision::Grant(Grant { resources, note: None })
    }

    /// Grant these resources and tell the operator why not more.
    pub fn grant_with_note(resources: Vec<Resource>, note: impl Into<String>) -> Self {
        Decision::Grant(Grant { resources, note: Some(note.into()) })
    }

    /// Refuse the whole exchange. `reason` is kebab-case and machine-readable
    /// (`licence-revoked`); `message` is shown to the caller.
    pub fn deny(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Decision::Deny(Denial { reason: reason.into(), message: message.into() })
    }
}
