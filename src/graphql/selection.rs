//! The one place where what a client selected becomes what to ask amoCRM for.
//!
//! The plan is computed from the parsed operation *before* execution (see
//! [`super::PlanningExtension`]), for the whole operation at once. That lets every `contact(id:)`
//! field of an operation be loaded in one batch without relying on a batching time window, and it
//! follows named and inline fragments, aliases, and `@skip`/`@include` with the request's
//! variables, defaults filled in.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use async_graphql::parser::types::{
    Directive, DocumentOperations, ExecutableDocument, Field, FragmentDefinition,
    OperationDefinition, OperationType, Selection, SelectionSet, VariableDefinition,
};
use async_graphql::{Name, Positioned, Variables};
use async_graphql_value::Value;

use super::connection::{Cursor, Window};
use super::query::{DEFAULT_FIRST, MAX_FIRST};
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
    /// Every detail: for contacts returned where no plan looked at the selection (mutation
    /// payloads), whose linked details then load as they are asked for.
    pub fn all() -> Self {
        Details {
            leads: true,
            customers: true,
            companies: true,
            catalog_elements: true,
            responsible_user: true,
        }
    }

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
    /// The window of each root `contacts` field, by response key; an argument its resolver
    /// will refuse gives an empty window, which costs nothing.
    windows: HashMap<String, Window>,
    /// Upstream calls the operation's price leaves to linked entities: their ids arrive with
    /// the pages, so the price estimates them, and this checks the real batches at run time.
    linked_budget: Option<u64>,
}

impl OperationPlan {
    /// The plan with `budget` upstream calls left for linked entities.
    pub fn with_linked_budget(mut self, budget: u64) -> Self {
        self.linked_budget = Some(budget);
        self
    }

    pub fn linked_budget(&self) -> Option<u64> {
        self.linked_budget
    }

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
        let walk = Walk::new(&document.fragments, variables);
        for field in walk.fields(&operation.selection_set.node) {
            let key = field.response_key().node.to_string();
            let needs = match field.name.node.as_str() {
                "contacts" => {
                    plan.windows
                        .entry(key.clone())
                        .or_insert_with(|| walk.window(field));
                    walk.connection_needs(field)
                }
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
        plan.gate = PrefetchGate::expecting(
            plan.needs_by_key
                .iter()
                .filter(|(_, needs)| needs.details.any())
                .map(|(key, _)| key.clone()),
        );
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

    /// The windows of the operation's `contacts` fields.
    pub fn windows(&self) -> impl Iterator<Item = Window> + '_ {
        self.windows.values().copied()
    }

    /// The linked entities any root field loads details of.
    pub fn details(&self) -> Details {
        self.needs_by_key
            .values()
            .fold(Details::default(), |all, needs| all.union(needs.details))
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
///
/// Fields are expected by response key, so a field that fails before it joins (an argument
/// refused by its resolver or by async-graphql) is released by key once it has resolved
/// ([`PrefetchGate::release`]) and the others never wait for it.
#[derive(Debug, Default)]
pub struct PrefetchGate {
    state: Mutex<GateState>,
    opened: Notify,
}

#[derive(Debug, Default)]
struct GateState {
    /// Response keys of the root fields that have not arrived yet.
    waiting_for: HashSet<String>,
    contacts: Vec<Arc<Contact>>,
    details: Details,
    open: bool,
}

/// A field's place at the gate: it arrives when told, or, if the field fails first, when
/// dropped, so that the others never wait for it.
pub struct Arrival<'a> {
    gate: &'a PrefetchGate,
    key: String,
    details: Details,
    arrived: bool,
}

/// Waiting for the other fields is bounded: only a bug could keep one from arriving.
const GATE_TIMEOUT: Duration = Duration::from_secs(5);

impl PrefetchGate {
    fn expecting(keys: impl IntoIterator<Item = String>) -> Self {
        PrefetchGate {
            state: Mutex::new(GateState {
                waiting_for: keys.into_iter().collect(),
                ..GateState::default()
            }),
            opened: Notify::new(),
        }
    }

    /// The place of the root field with this response key.
    pub fn join(&self, key: String, details: Details) -> Arrival<'_> {
        Arrival {
            gate: self,
            key,
            details,
            arrived: false,
        }
    }

    /// The root field with this response key has resolved, successfully or not: it no longer
    /// holds the others back. Nothing happens when it has already arrived.
    pub fn release(&self, key: &str) {
        self.arrive(key, &[], Details::default());
    }

    fn arrive(&self, key: &str, contacts: &[Arc<Contact>], details: Details) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.waiting_for.remove(key) {
            state.contacts.extend(contacts.iter().cloned());
            state.details = state.details.union(details);
        }
        if state.waiting_for.is_empty() && !state.open {
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
        self.gate.arrive(&self.key, contacts, self.details);
        self.gate.wait().await
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        if !self.arrived {
            self.gate.arrive(&self.key, &[], self.details);
        }
    }
}

/// Why a document's expansion has no useful size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unbounded<'a> {
    /// This fragment spreads itself, directly or through others.
    Cycle(&'a str),
    /// Fragments spread inside fragments deeper than [`MAX_FRAGMENT_NESTING`].
    Nesting,
}

/// Deeper than any fragment structure a client writes by hand or a tool generates; it keeps
/// every walk over fragments (ours and async-graphql's) far from the end of the stack.
pub const MAX_FRAGMENT_NESTING: usize = 64;

/// How many selections (fields, fragment spreads and inline fragments) the document's
/// operations hold once every fragment is inlined, saturating at `usize::MAX`.
/// async-graphql's complexity, depth and cache-control visitors walk exactly that expansion,
/// for every operation of the document whichever one runs, so this bounds their work.
/// Linear in the document: each fragment is counted once and its count reused.
pub fn expanded_selections(document: &ExecutableDocument) -> Result<usize, Unbounded<'_>> {
    let mut counted = HashMap::new();
    let mut total: usize = 0;
    for (_, operation) in document.operations.iter() {
        let count = count_set(
            &operation.node.selection_set.node,
            &document.fragments,
            &mut counted,
            0,
        )?;
        total = total.saturating_add(count);
    }
    Ok(total)
}

fn count_set<'a>(
    set: &'a SelectionSet,
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
    counted: &mut HashMap<&'a str, Option<usize>>,
    nesting: usize,
) -> Result<usize, Unbounded<'a>> {
    let mut total: usize = 0;
    for selection in &set.items {
        let below = match &selection.node {
            Selection::Field(field) => {
                count_set(&field.node.selection_set.node, fragments, counted, nesting)?
            }
            Selection::InlineFragment(fragment) => count_set(
                &fragment.node.selection_set.node,
                fragments,
                counted,
                nesting,
            )?,
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.as_str();
                match (counted.get(name), fragments.get(name)) {
                    (Some(Some(count)), _) => *count,
                    (Some(None), _) => return Err(Unbounded::Cycle(name)),
                    // An unknown fragment is validation's to report.
                    (None, None) => 0,
                    (None, Some(_)) if nesting >= MAX_FRAGMENT_NESTING => {
                        return Err(Unbounded::Nesting);
                    }
                    (None, Some(fragment)) => {
                        counted.insert(name, None);
                        let count = count_set(
                            &fragment.node.selection_set.node,
                            fragments,
                            counted,
                            nesting + 1,
                        )?;
                        counted.insert(name, Some(count));
                        count
                    }
                }
            }
        };
        total = total.saturating_add(1).saturating_add(below);
    }
    Ok(total)
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
    let walk = Walk::new(&document.fragments, &variables);
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
    /// What each fragment contributes at each level of a contact selection, computed once:
    /// a chain of fragments that each spread the next twice would otherwise be walked 2^depth
    /// times. `None` while a fragment is being walked, so that a cycle (validation refuses it
    /// later) ends instead of recursing forever.
    needs: RefCell<HashMap<(&'a str, Level), Option<ContactNeeds>>>,
    beyond: RefCell<HashMap<(&'a str, Level), Option<bool>>>,
}

/// Where in a `contacts` or `contact` selection a selection set sits; a fragment means the
/// same thing at every place of the same level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Level {
    Connection,
    Edge,
    Contact,
    /// Inside a linked entity: whether anything beyond these embedded fields is selected.
    Linked(&'static [&'static str]),
}

const EMBEDDED_ID: &[&str] = &["id"];
const EMBEDDED_CATALOG_LINK: &[&str] = &["id", "catalogId", "quantity", "priceId", "metadata"];

impl<'a> Walk<'a> {
    fn new(
        fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
        variables: &'a Variables,
    ) -> Self {
        Walk {
            fragments,
            variables,
            needs: RefCell::default(),
            beyond: RefCell::default(),
        }
    }

    /// The fields a selection set resolves to: fragments inlined, skipped ones left out. Each
    /// fragment is inlined once, which keeps this linear in the document: repeating a field
    /// changes no plan.
    fn fields(&self, set: &'a SelectionSet) -> Vec<&'a Field> {
        let mut fields = Vec::new();
        let mut inlined = HashSet::new();
        self.collect(set, &mut inlined, &mut fields);
        fields
    }

    fn collect(
        &self,
        set: &'a SelectionSet,
        inlined: &mut HashSet<&'a Name>,
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
                        self.collect(&fragment.node.selection_set.node, inlined, fields);
                    }
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    if !self.included(&spread.node.directives) || !inlined.insert(name) {
                        continue;
                    }
                    if let Some(fragment) = self.fragments.get(name) {
                        self.collect(&fragment.node.selection_set.node, inlined, fields);
                    }
                }
            }
        }
    }

    /// Combines what each selected field of `set` contributes (`of_field`), inlining
    /// fragments through `memo`, so each fragment is walked once per level.
    fn fold<T: Copy + Default>(
        &self,
        set: &'a SelectionSet,
        level: Level,
        memo: &RefCell<HashMap<(&'a str, Level), Option<T>>>,
        union: fn(T, T) -> T,
        of_field: &dyn Fn(&'a Field) -> T,
    ) -> T {
        let mut folded = T::default();
        for selection in &set.items {
            let part = match &selection.node {
                Selection::Field(field) if self.included(&field.node.directives) => {
                    of_field(&field.node)
                }
                Selection::InlineFragment(fragment) if self.included(&fragment.node.directives) => {
                    self.fold(
                        &fragment.node.selection_set.node,
                        level,
                        memo,
                        union,
                        of_field,
                    )
                }
                Selection::FragmentSpread(spread) if self.included(&spread.node.directives) => {
                    let name = spread.node.fragment_name.node.as_str();
                    let known = memo.borrow().get(&(name, level)).copied();
                    match (known, self.fragments.get(name)) {
                        (Some(Some(part)), _) => part,
                        (Some(None), _) | (None, None) => continue,
                        (None, Some(fragment)) => {
                            memo.borrow_mut().insert((name, level), None);
                            let part = self.fold(
                                &fragment.node.selection_set.node,
                                level,
                                memo,
                                union,
                                of_field,
                            );
                            memo.borrow_mut().insert((name, level), Some(part));
                            part
                        }
                    }
                }
                _ => continue,
            };
            folded = union(folded, part);
        }
        folded
    }

    fn needs_at(&self, set: &'a SelectionSet, level: Level) -> ContactNeeds {
        self.fold(set, level, &self.needs, ContactNeeds::union, &|field| {
            self.field_needs(level, field)
        })
    }

    fn connection_needs(&self, connection: &'a Field) -> ContactNeeds {
        self.needs_at(&connection.selection_set.node, Level::Connection)
    }

    fn contact_needs(&self, contact: &'a SelectionSet) -> ContactNeeds {
        self.needs_at(contact, Level::Contact)
    }

    /// What one field contributes at its level.
    fn field_needs(&self, level: Level, field: &'a Field) -> ContactNeeds {
        let name = field.name.node.as_str();
        let selected = &field.selection_set.node;
        match (level, name) {
            (Level::Connection, "nodes") | (Level::Edge, "node") => {
                self.needs_at(selected, Level::Contact)
            }
            (Level::Connection, "edges") => self.needs_at(selected, Level::Edge),
            (Level::Contact, _) => {
                let mut needs = ContactNeeds::default();
                if let Some(relation) = relation_of(name) {
                    needs.relations.insert(relation);
                }
                // What amoCRM embeds with a contact needs no further call: the id of each
                // linked entity, and for catalog elements also the link's own catalog,
                // quantity and price.
                let details = &mut needs.details;
                match name {
                    "leads" => details.leads = self.selects_beyond(selected, EMBEDDED_ID),
                    "customers" => {
                        details.customers = self.selects_beyond(selected, EMBEDDED_ID);
                    }
                    "companies" => {
                        details.companies = self.selects_beyond(selected, EMBEDDED_ID);
                    }
                    "catalogElements" => {
                        details.catalog_elements =
                            self.selects_beyond(selected, EMBEDDED_CATALOG_LINK);
                    }
                    "responsibleUser" => {
                        details.responsible_user = self.selects_beyond(selected, EMBEDDED_ID);
                    }
                    _ => {}
                }
                needs
            }
            _ => ContactNeeds::default(),
        }
    }

    /// Whether the selection asks for a field other than `known` (and `__typename`).
    fn selects_beyond(&self, set: &'a SelectionSet, known: &'static [&'static str]) -> bool {
        self.fold(
            set,
            Level::Linked(known),
            &self.beyond,
            |a, b| a || b,
            &|field| {
                let name = field.name.node.as_str();
                name != "__typename" && !known.contains(&name)
            },
        )
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

    fn resolve(&self, value: &Value) -> Option<Value> {
        match value {
            Value::Variable(name) => self.variables.get(name).cloned().map(|v| v.into_value()),
            other => Some(other.clone()),
        }
    }

    fn boolean(&self, value: &Value) -> Option<bool> {
        match self.resolve(value)? {
            Value::Boolean(b) => Some(b),
            _ => None,
        }
    }

    /// The window a `contacts` field asks for, read as its resolver reads `first` and `after`
    /// (see `query.rs`); arguments it refuses make an empty window.
    fn window(&self, connection: &'a Field) -> Window {
        let argument = |name| {
            connection
                .get_argument(name)
                .and_then(|value| self.resolve(&value.node))
                .filter(|value| *value != Value::Null)
        };
        let refused = Window { start: 0, len: 0 };
        let len = match argument("first") {
            None => DEFAULT_FIRST,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(first) if (0..=MAX_FIRST).contains(&first) => first,
                _ => return refused,
            },
            Some(_) => return refused,
        };
        let start = match argument("after") {
            None => 0,
            Some(Value::String(cursor)) => match Cursor::offset_of(&cursor) {
                Some(offset) => offset + 1,
                None => return refused,
            },
            Some(_) => return refused,
        };
        Window {
            start,
            len: u64::try_from(len).unwrap_or(0),
        }
    }

    fn contact_id(&self, value: &Value) -> Option<ContactId> {
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

    /// `{ ...F0 }` where each fragment spreads the next twice: 3·2^levels − 1 selections.
    fn doubling(levels: usize, leaf: &str) -> String {
        let mut document = String::from("{ ...F0 }");
        for level in 0..levels {
            let next = level + 1;
            document.push_str(&format!(
                " fragment F{level} on Query {{ ...F{next} ...F{next} }}"
            ));
        }
        document.push_str(&format!(" fragment F{levels} on Query {{ {leaf} }}"));
        document
    }

    #[test]
    fn selections_are_counted_with_fragments_inlined() {
        let count = |query: &str| {
            expanded_selections(&parse_query(query).expect("valid"))
                .map_err(|unbounded| format!("{unbounded:?}"))
        };
        assert_eq!(
            count("{ a b { c } ...F } fragment F on Query { d { e } }"),
            Ok(6)
        );
        assert_eq!(
            count("query A { a } query B { ...F ...F } fragment F on Query { b }"),
            Ok(5)
        );
        assert_eq!(count(&doubling(11, "x")), Ok(3 * 2048 - 1));
        assert_eq!(count(&doubling(63, "x")), Ok(usize::MAX), "saturates");
        assert_eq!(
            count("{ ...A } fragment A on Query { ...B } fragment B on Query { x ...A }"),
            Err(format!("{:?}", Unbounded::Cycle("A")))
        );
        let chain: String = (0..100)
            .map(|i| format!(" fragment F{i} on Query {{ x ...F{} }}", i + 1))
            .collect();
        assert_eq!(
            count(&format!(
                "{{ ...F0 }}{chain} fragment F100 on Query {{ x }}"
            )),
            Err(format!("{:?}", Unbounded::Nesting))
        );
    }

    #[test]
    fn planning_is_linear_in_the_document_however_far_fragments_expand() {
        // 2^60 contacts fields once inlined: walked without memoization this never ends.
        let started = std::time::Instant::now();
        let p = plan(
            &(doubling(60, "contacts { nodes { ...C } } contact(id: 5) { ...C }")
                + &doubling_contact(60)),
            serde_json::json!({}),
        );
        assert_eq!(with(&p, "contacts").as_deref(), Some("leads"));
        assert!(p.needs_of("contacts").details.leads);
        assert_eq!(p.contact_batch().0.len(), 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    /// `fragment C on Contact` spreading a chain that doubles 60 times down to `leads`.
    fn doubling_contact(levels: usize) -> String {
        let mut fragments = String::from(" fragment C on Contact { ...G0 }");
        for level in 0..levels {
            let next = level + 1;
            fragments.push_str(&format!(
                " fragment G{level} on Contact {{ ...G{next} ...G{next} }}"
            ));
        }
        fragments.push_str(&format!(
            " fragment G{levels} on Contact {{ leads {{ name }} }}"
        ));
        fragments
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
