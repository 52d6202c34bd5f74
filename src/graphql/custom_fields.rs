//! `contactCustomFields`: the account's contact field definitions, from which frontends build
//! forms and against which the gateway checks mutation input.

use std::sync::Arc;

use async_graphql::{ID, Object};

use crate::amocrm::FieldDefinition;

/// A custom field of the account's contacts.
pub struct CustomFieldDefinition(pub Arc<Vec<FieldDefinition>>, pub usize);

#[Object]
impl CustomFieldDefinition {
    async fn id(&self) -> ID {
        ID(self.field().id.to_string())
    }

    async fn name(&self) -> &str {
        &self.field().name
    }

    /// The field's code (`PHONE`, `EMAIL`...), for fields that have one: mutations may name a
    /// field by it.
    async fn code(&self) -> Option<&str> {
        self.field().code.as_deref()
    }

    /// amoCRM's field type: `text`, `numeric`, `checkbox`, `select`, `multiselect`, `date`,
    /// `date_time`, `birthday`, `multitext` (phones, e-mails), `url`, `textarea`...
    #[graphql(name = "type")]
    async fn field_type(&self) -> &str {
        &self.field().field_type
    }

    /// The choices of a list field (and the kinds of a phone or e-mail, such as `WORK`); null
    /// for fields without any.
    async fn enums(&self) -> Option<Vec<CustomFieldEnum<'_>>> {
        let enums = &self.field().enums;
        (!enums.is_empty()).then(|| {
            enums
                .iter()
                .map(|e| CustomFieldEnum {
                    id: e.id,
                    value: &e.value,
                })
                .collect()
        })
    }
}

impl CustomFieldDefinition {
    fn field(&self) -> &FieldDefinition {
        &self.0[self.1]
    }

    pub fn all(definitions: Arc<Vec<FieldDefinition>>) -> Vec<Self> {
        (0..definitions.len())
            .map(|i| CustomFieldDefinition(definitions.clone(), i))
            .collect()
    }
}

/// One choice of a list field. Mutations take its `id` as `enumId` or its `value` as `enumCode`.
pub struct CustomFieldEnum<'a> {
    id: u64,
    value: &'a str,
}

#[Object]
impl CustomFieldEnum<'_> {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }

    async fn value(&self) -> &str {
        self.value
    }
}
