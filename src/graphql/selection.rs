//! The one place where what a client selected becomes what to ask amoCRM for.
//!
//! The plan is computed from the parsed operation *before* execution (see
//! [`super::PlanningExtension`]), for the whole operation at once. That lets every `contact(id:)`
//! field of an operation be loaded in one batch without relying on a batching time window, and it
//! follows named and inline fragments, aliases, and `@skip`/`@include` with the request's
//! variables, defaults filled in.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use async_graphql::parser::types::{
    Directive, DocumentOperations, ExecutableDocument, Field, FragmentDefinition,
    OperationDefinition, OperationType, Selection, SelectionSet, VariableDefinition,
};
use async_graphql::{Name, Positioned, Variables};
use async_graphql_value::Value;

use crate::amocrm::{Contact, ContactId, Relation, Relations};

/// Contact fields whose data amoCRM only embeds when asked for in `with`.
fn relation_of(field_name: &str) -> Option<Relation> {
    match field_name {
        "leads" => Some(Relation::Leads),
        "customers" => Some(Relation::Customers),
        "catalogElements" => Some(Relation::CatalogElements),
        _ => None,
    }
}

/// Linked entities whose own data (more than their id) is selected, so they must be loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Details {
    pub leads: bool,
    pub customers: bool,
    pub companies: bool,
    pub catalog_elements: bool,
    pub responsible_user: bool,
}

impl Details {
    /// Whether anything must be loaded at all.
    pub fn any(self) -> bool {
        self.leads
            || self.customers
            || self.companies
            || self.catalog_elements
            || self.responsible_user
    }

    fn union(self, other: Details) -> Details {
        Details {
            leads: self.leads || other.leads,
            customers: self.customers || other.customers,
            companies: self.companies || other.companies,
            catalog_elements: self.catalog_elements || other.catalog_elements,
            responsible_user: self.responsible_user || other.responsible_user,
        }
    }
}

/// What the contacts under one root field need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContactNeeds {
    /// Relations for amoCRM's `with`.
    pub relations: Relations,
    /// Linked entities to load in batches.
    pub details: Details,
}

impl ContactNeeds {
    fn union(self, other: ContactNeeds) -> ContactNeeds {
        ContactNeeds {
            relations: self.relations.union(other.relations),
            details: self.details.union(other.details),
        }
    }
}

/// What one operation needs from amoCRM, decided before it runs.
#[derive(Debug, Default)]
pub struct OperationPlan {
    /// Where the root fields that need linked entities meet, so that the entities of all their
    /// contacts are loaded together.
    gate: PrefetchGate,
    /// Needs of each root `contacts`/`contact` field, by response key (alias or name), merged
    /// over every occurrence of that key.
    needs_by_key: HashMap<String, ContactNeeds>,
    /// Every id asked for by a root `contact(id:)` field, valid or not yet validated.
    contact_ids: BTreeSet<ContactId>,
    /// What any root `contact` field needs: the batch loads it all at once.
    contact_needs: ContactNeeds,
}

impl OperationPlan {
    /// Plans the operation `operation_name` of `document`, with `variables` (defaults filled).
    pub fn new(
        document: &ExecutableDocument,
        operation_name: Option<&str>,
        variables: &Variables,
    ) -> Self {
        let mut plan = OperationPlan::default();
        let Some(operation) = find_operation(document, operation_name) else {
            return plan;
        };
        if operation.ty != OperationType::Query {
            return plan;
        }
        let walk = Walk {
            fragments: &document.fragments,
            variables,
        };
        for field in walk.fields(&operation.selection_set.node) {
            let key = field.response_key().node.to_string();
            let needs = match field.name.node.as_str() {
                "contacts" => walk.connection_needs(field),
                "contact" => {
                    let needs = walk.contact_needs(&field.selection_set.node);
                    plan.contact_needs = plan.contact_needs.union(needs);
                    if let Some(id) = field
                        .get_argument("id")
                        .and_then(|id| walk.contact_id(&id.node))
                    {
                        plan.contact_ids.insert(id);
                    }
                    needs
                }
                _ => continue,
            };
            let entry = plan.needs_by_key.entry(key).or_default();
            *entry = entry.union(needs);
        }
        plan.gate.expected = plan
            .needs_by_key
            .values()
            .filter(|n| n.details.any())
            .count();
        plan
    }

    /// The meeting point of the root fields that load linked entities.
    pub fn gate(&self) -> &PrefetchGate {
        &self.gate
    }

    /// What the root field with this response key needs.
    pub fn needs_of(&self, response_key: &str) -> ContactNeeds {
        self.needs_by_key
            .get(response_key)
            .copied()
            .unwrap_or_default()
    }

    /// All ids of the operation's `contact` fields, and what to load them with.
    pub fn contact_batch(&self) -> (&BTreeSet<ContactId>, ContactNeeds) {
        (&self.contact_ids, self.contact_needs)
    }
}

/// Collects the contacts of every root field that needs linked entities, and opens once all of
/// them have arrived: each then loads the union, which the request's DataLoader turns into one
/// batch per kind for the whole operation. Counting arrivals, not waiting for a time window,
/// is what keeps that true on a busy machine.
#[derive(Debug, Default)]
pub struct PrefetchGate {
    expected: usize,
    state: Mutex<GateState>,
    opened: Notify,
}

#[derive(Debug, Default)]
struct GateState {
    arrived: usize,
    contacts: Vec<Arc<Contact>>,
    details: Details,
    open: bool,
}

/// A field's place at the gate: it arrives when told, or, if the field fails first, when
/// dropped, so that the others never wait for it.
pub struct Arrival<'a> {
    gate: &'a PrefetchGate,
    details: Details,
    arrived: bool,
}

/// Waiting for the other fields is bounded: only a bug could keep one from arriving.
const GATE_TIMEOUT: Duration = Duration::from_secs(5);

impl PrefetchGate {
    pub fn join(&self, details: Details) -> Arrival<'_> {
        Arrival {
            gate: self,
            details,
            arrived: false,
        }
    }

    fn arrive(&self, contacts: &[Arc<Contact>], details: Details) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.arrived += 1;
        state.contacts.extend(contacts.iter().cloned());
        state.details = state.details.union(details);
        if state.arrived >= self.expected {
            state.open = true;
            self.opened.notify_waiters();
        }
    }

    /// All contacts and details, once every field has arrived.
    async fn wait(&self) -> (Vec<Arc<Contact>>, Details) {
        let deadline = tokio::time::Instant::now() + GATE_TIMEOUT;
        loop {
            let opened = self.opened.notified();
            {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.open || tokio::time::Instant::now() >= deadline {
                    state.open = true;
                    return (state.contacts.clone(), state.details);
                }
            }
            let _ = tokio::time::timeout_at(deadline, opened).await;
        }
    }
}

impl Arrival<'_> {
    /// Arrives with this field's contacts and waits for the others: then everything the
    /// operation needs is known.
    pub async fn arrive(mut self, contacts: &[Arc<Contact>]) -> (Vec<Arc<Contact>>, Details) {
        self.arrived = true;
        self.gate.arrive(contacts, self.details);
        self.gate.wait().await
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        if !self.arrived {
            self.gate.arrive(&[], self.details);
        }
    }
}

/// How many aliased fields the document holds, in every operation and fragment.
pub fn count_aliases(document: &ExecutableDocument) -> usize {
    fn in_set(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(field) => {
                    usize::from(field.node.alias.is_some()) + in_set(&field.node.selection_set.node)
                }
                Selection::InlineFragment(fragment) => in_set(&fragment.node.selection_set.node),
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    let operations: usize = document
        .operations
        .iter()
        .map(|(_, operation)| in_set(&operation.node.selection_set.node))
        .sum();
    let fragments: usize = document
        .fragments
        .values()
        .map(|fragment| in_set(&fragment.node.selection_set.node))
        .sum();
    operations + fragments
}

/// Whether the operation asks for `__schema` or `__type` at its root.
pub fn introspects(document: &ExecutableDocument, operation_name: Option<&str>) -> bool {
    let Some(operation) = find_operation(document, operation_name) else {
        return false;
    };
    let variables = Variables::default();
    let walk = Walk {
        fragments: &document.fragments,
        variables: &variables,
    };
    walk.fields(&operation.selection_set.node)
        .iter()
        .any(|field| matches!(field.name.node.as_str(), "__schema" | "__type"))
}

/// Whether the operation a request asks to run is a mutation, which GET may not carry. A
/// document that does not parse, or names no operation, is left for execution to report.
pub fn is_mutation(request: &mut async_graphql::Request) -> bool {
    let operation_name = request.operation_name.clone();
    request.parsed_query().is_ok_and(|document| {
        find_operation(document, operation_name.as_deref())
            .is_some_and(|operation| operation.ty == OperationType::Mutation)
    })
}

/// Adds the declared default of every variable the client did not send.
///
/// async-graphql 7.2 evaluates `@include(if: $v)` with only the variables that were sent, so
/// `query($v: Boolean = true) { … @include(if: $v) }` sent without variables would drop the field.
pub fn fill_variable_defaults(
    document: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &mut Variables,
) {
    let Some(operation) = find_operation(document, operation_name) else {
        return;
    };
    for definition in &operation.variable_definitions {
        let definition = &definition.node;
        if let Some(default) = &definition.default_value
            && !variables.contains_key(&definition.name.node)
        {
            variables.insert(definition.name.node.clone(), default.node.clone());
        }
    }
}

/// The first variable of a non-null type that has no value: not sent, and declared without a
/// default. async-graphql notices one only when a field reads it, as that field's error; the
/// spec coerces variables before execution, which makes it a request error.
pub fn unprovided_variable<'a>(
    document: &'a ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
) -> Option<&'a Positioned<VariableDefinition>> {
    find_operation(document, operation_name)?
        .variable_definitions
        .iter()
        .find(|definition| {
            let definition = &definition.node;
            !definition.var_type.node.nullable
                && definition.default_value.is_none()
                && !variables.contains_key(&definition.name.node)
        })
}

pub(super) fn find_operation<'a>(
    document: &'a ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<&'a OperationDefinition> {
    match (&document.operations, operation_name) {
        (DocumentOperations::Single(operation), _) => Some(&operation.node),
        (DocumentOperations::Multiple(operations), Some(name)) => {
            operations.get(name).map(|o| &o.node)
        }
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next().map(|o| &o.node)
        }
        _ => None,
    }
}

struct Walk<'a> {
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
    variables: &'a Variables,
}

impl<'a> Walk<'a> {
    /// The fields a selection set resolves to: fragments inlined, skipped ones left out.
    fn fields(&self, set: &'a SelectionSet) -> Vec<&'a Field> {
        let mut fields = Vec::new();
        // The plan runs before validation, so fragment cycles are still possible here.
        let mut visiting = Vec::new();
        self.collect(set, &mut visiting, &mut fields);
        fields
    }

    fn collect(
        &self,
        set: &'a SelectionSet,
        visiting: &mut Vec<&'a Name>,
        fields: &mut Vec<&'a Field>,
    ) {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => {
                    if self.included(&field.node.directives) {
                        fields.push(&field.node);
                    }
                }
                Selection::InlineFragment(fragment) => {
                    if self.included(&fragment.node.directives) {
                        self.collect(&fragment.node.selection_set.node, visiting, fields);
                    }
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    if !self.included(&spread.node.directives) || visiting.contains(&name) {
                        continue;
                    }
                    if let Some(fragment) = self.fragments.get(name) {
                        visiting.push(name);
                        self.collect(&fragment.node.selection_set.node, visiting, fields);
                        visiting.pop();
                    }
                }
            }
        }
    }

    fn connection_needs(&self, connection: &'a Field) -> ContactNeeds {
        let mut needs = ContactNeeds::default();
        for field in self.fields(&connection.selection_set.node) {
            match field.name.node.as_str() {
                "nodes" => needs = needs.union(self.contact_needs(&field.selection_set.node)),
                "edges" => {
                    for edge_field in self.fields(&field.selection_set.node) {
                        if edge_field.name.node == "node" {
                            needs = needs.union(self.contact_needs(&edge_field.selection_set.node));
                        }
                    }
                }
                _ => {}
            }
        }
        needs
    }

    fn contact_needs(&self, contact: &'a SelectionSet) -> ContactNeeds {
        let mut needs = ContactNeeds::default();
        for field in self.fields(contact) {
            let name = field.name.node.as_str();
            if let Some(relation) = relation_of(name) {
                needs.relations.insert(relation);
            }
            let selected = &field.selection_set.node;
            // What amoCRM embeds with a contact needs no further call: the id of each linked
            // entity, and for catalog elements also the link's own catalog, quantity and price.
            let details = &mut needs.details;
            match name {
                "leads" => details.leads |= self.selects_beyond(selected, &["id"]),
                "customers" => details.customers |= self.selects_beyond(selected, &["id"]),
                "companies" => details.companies |= self.selects_beyond(selected, &["id"]),
                "catalogElements" => {
                    details.catalog_elements |= self.selects_beyond(
                        selected,
                        &["id", "catalogId", "quantity", "priceId", "metadata"],
                    );
                }
                "responsibleUser" => {
                    details.responsible_user |= self.selects_beyond(selected, &["id"]);
                }
                _ => {}
            }
        }
        needs
    }

    /// Whether the selection asks for a field other than `known` (and `__typename`).
    fn selects_beyond(&self, set: &'a SelectionSet, known: &[&str]) -> bool {
        self.fields(set).into_iter().any(|field| {
            let name = field.name.node.as_str();
            name != "__typename" && !known.contains(&name)
        })
    }

    /// `false` when `@skip(if: true)` or `@include(if: false)` applies. An argument that cannot
    /// be read yet (a missing variable) keeps the field: validation reports it afterwards.
    fn included(&self, directives: &[Positioned<Directive>]) -> bool {
        directives.iter().all(|directive| {
            let condition = directive
                .node
                .get_argument("if")
                .and_then(|value| self.boolean(&value.node));
            !matches!(
                (directive.node.name.node.as_str(), condition),
                ("skip", Some(true)) | ("include", Some(false))
            )
        })
    }

    fn resolve(&self, value: &'a Value) -> Option<Value> {
        match value {
            Value::Variable(name) => self.variables.get(name).cloned().map(|v| v.into_value()),
            other => Some(other.clone()),
        }
    }

    fn boolean(&self, value: &'a Value) -> Option<bool> {
        match self.resolve(value)? {
            Value::Boolean(b) => Some(b),
            _ => None,
        }
    }

    fn contact_id(&self, value: &'a Value) -> Option<ContactId> {
        let id = match self.resolve(value)? {
            Value::String(s) => s.trim().parse().ok()?,
            Value::Number(n) => n.as_u64()?,
            _ => return None,
        };
        (id > 0).then(|| ContactId::new(id))
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::parser::parse_query;

    use super::*;

    fn plan(query: &str, variables: serde_json::Value) -> OperationPlan {
        let document = parse_query(query).expect("valid query");
        let mut variables = Variables::from_json(variables);
        fill_variable_defaults(&document, None, &mut variables);
        OperationPlan::new(&document, None, &variables)
    }

    fn with(plan: &OperationPlan, key: &str) -> Option<String> {
        plan.needs_of(key).relations.with_param()
    }

    #[test]
    fn follows_fragments_aliases_and_both_connection_paths() {
        let p = plan(
            r#"query {
                a: contacts { edges { node { ...C } } }
                b: contacts { nodes { ... on Contact { customers { id } } } pageInfo { hasNextPage } }
                c: contacts { nodes { id name tags { id } companies { id } } }
            }
            fragment C on Contact { l: leads { id } ...D }
            fragment D on Contact { catalogElements { id } ...C }"#,
            serde_json::json!({}),
        );
        assert_eq!(with(&p, "a").as_deref(), Some("leads,catalog_elements"));
        assert_eq!(with(&p, "b").as_deref(), Some("customers"));
        assert_eq!(with(&p, "c"), None);
    }

    #[test]
    fn skip_and_include_use_variables_and_their_defaults() {
        let query = r#"query($v: Boolean = true, $s: Boolean!) {
            contacts { nodes { leads @include(if: $v) { id } customers @skip(if: $s) { id } } }
        }"#;
        let p = plan(query, serde_json::json!({ "s": true }));
        assert_eq!(with(&p, "contacts").as_deref(), Some("leads"));
        let p = plan(query, serde_json::json!({ "v": false, "s": false }));
        assert_eq!(with(&p, "contacts").as_deref(), Some("customers"));
    }

    #[test]
    fn contact_fields_form_one_batch() {
        let p = plan(
            r#"query($id: ID!) {
                a: contact(id: 1) { id }
                b: contact(id: $id) { leads { id } }
                c: contact(id: "x") { id }
            }"#,
            serde_json::json!({ "id": "7" }),
        );
        let (ids, needs) = p.contact_batch();
        assert_eq!(
            ids.iter().map(|id| id.get()).collect::<Vec<_>>(),
            vec![1, 7]
        );
        assert_eq!(needs.relations.with_param().as_deref(), Some("leads"));
        assert_eq!(
            needs.details,
            Details::default(),
            "ids alone need no loading"
        );
    }

    #[test]
    fn details_beyond_embedded_data_are_planned() {
        let p = plan(
            r#"{ contacts { nodes { leads { id __typename } companies { name }
                 catalogElements { id quantity metadata } responsibleUser { ... on User { email } } } } }"#,
            serde_json::json!({}),
        );
        let details = p.needs_of("contacts").details;
        assert!(!details.leads && details.companies && !details.catalog_elements);
        assert!(details.responsible_user && !details.customers);
    }
}
