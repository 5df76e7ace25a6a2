-- A small demo platform: the tables of a CRM + bookings + invoicing SaaS, as a platform
-- would have them, watched by Conveyor and registered as entities for data steps.
-- Loaded by `conveyor demo load` (part of `make run`); safe to load twice.
create schema if not exists demo;

create table if not exists demo.companies (
  id bigint generated always as identity primary key,
  tenant_id text not null,
  name text not null,
  industry text,
  created_at timestamptz not null default now()
);

create table if not exists demo.contacts (
  id bigint generated always as identity primary key,
  tenant_id text not null,
  company_id bigint references demo.companies (id),
  first_name text not null,
  last_name text,
  email text not null,
  phone text,
  type text not null default 'lead' check (type in ('lead', 'customer', 'partner')),
  owner_id bigint,
  timezone text not null default 'UTC',
  tags text[] not null default '{}',
  joined_at date not null default current_date,
  last_active_at timestamptz,
  last_reply_at timestamptz,
  created_at timestamptz not null default now()
);

create table if not exists demo.deals (
  id bigint generated always as identity primary key,
  tenant_id text not null,
  contact_id bigint references demo.contacts (id),
  title text not null,
  amount numeric(12, 2) not null default 0,
  stage text not null default 'open' check (stage in ('open', 'qualified', 'proposal', 'won', 'lost')),
  owner_id bigint,
  updated_at timestamptz not null default now()
);

create table if not exists demo.invoices (
  id bigint generated always as identity primary key,
  tenant_id text not null,
  contact_id bigint references demo.contacts (id),
  number text not null,
  amount numeric(12, 2) not null,
  currency text not null default 'EUR',
  status text not null default 'open' check (status in ('open', 'paid', 'overdue', 'void')),
  due_date date not null,
  payment_failures integer not null default 0
);

create table if not exists demo.appointments (
  id bigint generated always as identity primary key,
  tenant_id text not null,
  contact_id bigint references demo.contacts (id),
  title text not null,
  starts_at timestamptz not null,
  status text not null default 'booked' check (status in ('booked', 'cancelled', 'done'))
);

create table if not exists demo.tasks (
  id bigint generated always as identity primary key,
  tenant_id text not null,
  contact_id bigint,
  title text not null,
  assignee_id bigint,
  due_at timestamptz,
  done boolean not null default false,
  tags text[] not null default '{}'
);

create table if not exists demo.notifications (
  id bigint generated always as identity primary key,
  tenant_id text not null,
  user_id bigint,
  title text not null,
  body text,
  created_at timestamptz not null default now(),
  read_at timestamptz
);

select conveyor.watch('demo.contacts', 'crm', 'contact');
select conveyor.watch('demo.deals', 'crm', 'deal');
select conveyor.watch('demo.invoices', 'billing', 'invoice');
select conveyor.watch('demo.appointments', 'booking', 'appointment');

insert into conveyor.entities (entity, table_name, id_column, tenant_column, tags_column) values
('company', 'demo.companies', 'id', 'tenant_id', null),
('contact', 'demo.contacts', 'id', 'tenant_id', 'tags'),
('deal', 'demo.deals', 'id', 'tenant_id', null),
('invoice', 'demo.invoices', 'id', 'tenant_id', null),
('appointment', 'demo.appointments', 'id', 'tenant_id', null),
('task', 'demo.tasks', 'id', 'tenant_id', 'tags'),
('notification', 'demo.notifications', 'id', 'tenant_id', null)
on conflict (entity) do update
  set table_name = excluded.table_name, id_column = excluded.id_column,
    tenant_column = excluded.tenant_column, tags_column = excluded.tags_column;
