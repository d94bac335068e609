//! The contract's types (`stellaops:registry-policy@0.2.0`), re-exported from the bindings, with
//! constructors for tests and policies.

pub use crate::bindings::v0_2::stellaops::registry_policy::types::{
    Annotation, Caller, Decision, Denial, Grant, Request, Resource,
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
    /// else (a hand-built request in a test, say) is an error rather than an empty set of claims,
    /// so a rule cannot mistake "unreadable" for "absent".
    ///
    /// ```
    /// use registry_policy::Caller;
    ///
    /// let caller = Caller::new("alice").with_claims(serde_json::json!({"department": "qa"}));
    /// assert_eq!(caller.claims().unwrap()["department"], "qa");
    /// let mut broken = Caller::new("bob");
    /// broken.claims_json = "not json".to_owned();
    /// assert!(broken.claims().is_err());
    /// ```
    pub fn claims(&self) -> Result<serde_json::Map<String, serde_json::Value>, serde_json::Error> {
        serde_json::from_str(&self.claims_json)
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
    /// A request, as the host would send it, at time 0 (set [`Request::at`] for time rules).
    pub fn new(caller: Caller, service: impl Into<String>, resources: Vec<Resource>) -> Self {
        Request { caller, service: service.into(), resources, time: 0 }
    }

    /// The same request received at `time` (Unix seconds).
    pub fn at(mut self, time: u64) -> Self {
        self.time = time;
        self
    }
}

impl Annotation {
    /// `Annotation::new("rule", "plans.team[0]")`.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Annotation { key: key.into(), value: value.into() }
    }
}

impl Grant {
    /// These resources, with no note, lifetime or annotations.
    pub fn new(resources: Vec<Resource>) -> Self {
        Grant { resources, note: None, lifetime_seconds: None, annotations: Vec::new() }
    }
}

impl Decision {
    /// Grant these resources (each a subset of what was requested), with no note.
    pub fn grant(resources: Vec<Resource>) -> Self {
        Decision::Grant(Grant::new(resources))
    }

    /// Grant these resources and tell the operator why not more.
    pub fn grant_with_note(resources: Vec<Resource>, note: impl Into<String>) -> Self {
        Decision::Grant(Grant { note: Some(note.into()), ..Grant::new(resources) })
    }

    /// Refuse the whole exchange. `reason` is kebab-case and machine-readable
    /// (`licence-revoked`); `message` is shown to the caller.
    pub fn deny(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Decision::Deny(Denial { reason: reason.into(), message: message.into(), annotations: Vec::new() })
    }

    /// The same decision asking for a token lifetime of `seconds` (a grant only; the host clamps
    /// it to its own bounds). A denial is returned unchanged.
    pub fn with_lifetime(mut self, seconds: u32) -> Self {
        if let Decision::Grant(grant) = &mut self {
            grant.lifetime_seconds = Some(seconds);
        }
        self
    }

    /// The same decision with one more annotation for the audit trail (the host accepts at most
    /// 8, keys of `[a-z0-9._-]`, values of at most 256 bytes).
    ///
    /// ```
    /// use registry_policy::Decision;
    ///
    /// let decision = Decision::grant(Vec::new()).with_lifetime(3600).annotate("rule", "long-push");
    /// let Decision::Grant(grant) = decision else { unreachable!() };
    /// assert_eq!(grant.lifetime_seconds, Some(3600));
    /// assert_eq!(grant.annotations[0].value, "long-push");
    /// ```
    pub fn annotate(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let annotation = Annotation::new(key, value);
        match &mut self {
            Decision::Grant(grant) => grant.annotations.push(annotation),
            Decision::Deny(denial) => denial.annotations.push(annotation),
        }
        self
    }
}
